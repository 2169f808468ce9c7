"""A served model's traffic policy: which share of the champion's requests a challenger answers (canary)
or answers too, unseen (shadow). Written by `tuneloop traffic set NAME FILE`, validated like recipes,
stored beside the aliases in the serving state every server polls.

```yaml
canary: {alias: challenger, share: 0.1, sticky_by: user}   # the challenger answers 10% of callers
shadow: {alias: challenger, share: 0.25, min_pairs: 600}   # and also answers 25% of the rest, unseen
```

A policy splits the requests for `NAME@champion` (a request's default); requests naming another alias or
a version are answered by what they name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneloop.names import Alias
from tuneloop.yaml_models import Strict

_ALIAS = r"^[A-Za-z_][\w-]*$"


class Canary(Strict):
    alias: str = Field(Alias.CHALLENGER, pattern=_ALIAS, description="The alias whose holder answers the share.")
    share: float = Field(gt=0.0, le=1.0, description="Share of the champion's requests it answers (0-1].")
    sticky_by: Literal["user", "none"] = Field(
        "user", description="`user`: a request's `user` always gets the same version while the policy holds."
    )


class Shadow(Strict):
    alias: str = Field(Alias.CHALLENGER, pattern=_ALIAS, description="The alias whose holder answers unseen.")
    share: float = Field(gt=0.0, le=1.0, description="Share of the champion's answered requests shadowed (0-1].")
    min_pairs: int = Field(100, ge=1, description="Shadow gates fail on fewer (live, shadow) pairs than this.")


class TrafficPolicy(Strict):
    canary: Canary | None = None
    shadow: Shadow | None = None

    @model_validator(mode="after")
    def _not_the_champion(self) -> TrafficPolicy:
        for section in ("canary", "shadow"):
            part = getattr(self, section)
            if part is not None and part.alias == Alias.CHAMPION:
                raise ValueError(f"`{section}.alias` is the alias being split; name the challenger's alias")
        return self

    @property
    def active(self) -> bool:
        return self.canary is not None or self.shadow is not None

    def summary(self) -> str:
        parts = []
        if self.canary is not None:
            sticky = ", sticky by user" if self.canary.sticky_by == "user" else ""
            parts.append(f"canary {self.canary.alias} {self.canary.share:.0%}{sticky}")
        if self.shadow is not None:
            parts.append(f"shadow {self.shadow.alias} {self.shadow.share:.0%} (min {self.shadow.min_pairs} pairs)")
        return "; ".join(parts) or "off: the champion answers every request"


OFF = TrafficPolicy()
