"""Alert rules (YAML, validated) and the incident logic that turns a monitor's windows into alerts.

    name: support-drift
    monitor: support-champion
    when: {drift: any}                 # any check drifted; or a check name / glob: output.refusal, prompt.*
    # when: {check: quality.accuracy, below: 0.8}   a check's statistic against a threshold
    for_windows: 3                     # K consecutive judged windows before firing
    resolve_after: 3                   # consecutive calm windows before the incident closes (default: K)
    cooldown_windows: 10               # after an incident closes, windows before a new one may fire
    min_size: 200                      # smaller windows neither count nor break a streak
    severity: warning
    webhooks: [https://hooks.example.com/T0/B0]   # JSON POST per opened/resolved incident, retried

One alert per incident, never one per window: an incident opens when the condition has held for K
consecutive judged windows, stays open while it keeps holding (a single calm window does not close
it), and a new incident waits out the cooldown. Windows below `min_size` or marked "not enough data"
are skipped. `incidents` is a pure function of the window results, so `monitor backtest --alert`
replays a rule over history exactly as the live loop applies it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tuneloop.monitors.drift.checks import WindowResult
from tuneloop.yaml_models import Strict, load_yaml_model


class Condition(Strict):
    drift: str | None = Field(
        None, description="`any`, or a check name or glob (e.g. `output.refusal`, `prompt.*`) that drifted"
    )
    check: str | None = Field(None, description="A check whose statistic is compared with `above` or `below`")
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        if (self.drift is None) == (self.check is None):
            raise ValueError("give either `drift` (a check that drifted) or `check` with `above`/`below`")
        if self.check is not None and (self.above is None) == (self.below is None):
            raise ValueError("a `check` condition needs exactly one of `above` and `below`")
        if self.drift is not None and (self.above is not None or self.below is not None):
            raise ValueError("`above`/`below` go with `check`, not `drift`")
        return self

    def describe(self) -> str:
        if self.drift is not None:
            return "any check drifted" if self.drift == "any" else f"`{self.drift}` drifted"
        return f"`{self.check}` " + (f"above {self.above:g}" if self.above is not None else f"below {self.below:g}")

    def holds(self, window: WindowResult) -> bool:
        if self.drift is not None:
            return any(self.drift == "any" or fnmatch.fnmatchcase(name, self.drift) for name in window.drifted_checks)
        found = [c.statistic for c in window.checks if c.check == self.check]
        if not found:
            return False  # the check did not run (e.g. no feedback in this window): no evidence either way
        return found[0] > self.above if self.above is not None else found[0] < self.below  # type: ignore[operator]


class AlertRule(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    monitor: str | None = Field(None, description="The monitor whose windows the rule reads")
    when: Condition
    for_windows: int = Field(3, ge=1, le=1000, description="Consecutive windows the condition must hold before firing")
    resolve_after: int | None = Field(
        None, ge=1, le=1000, description="Consecutive calm windows that close an incident (default: for_windows)"
    )
    cooldown_windows: int = Field(
        0, ge=0, le=100_000, description="Windows after an incident closes before a new one may fire"
    )
    min_size: int = Field(1, ge=1, description="Windows with fewer records are skipped")
    severity: Literal["info", "warning", "critical"] = "warning"
    webhooks: list[str] = Field(
        default_factory=list,
        description="URLs that get a JSON POST when an incident opens "
        "or resolves (retried with backoff); they may carry tokens, so they are never logged",
    )

    @model_validator(mode="after")
    def _http_webhooks(self) -> AlertRule:
        bad = [i for i, url in enumerate(self.webhooks) if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"`webhooks` entries {bad} are not http(s) URLs")
        return self


def load_rule(path: str | Path) -> AlertRule:
    return load_yaml_model(path, AlertRule, kind="alert rule", hint="see examples/alerts/ for a working rule")


@dataclass
class Incident:
    opened: int  # the window that fired the alert (its index in a backtest, its id in a live monitor)
    first: int  # first window of the streak that led to it
    closed: int | None = None  # the window that closed it; None while open

    def as_dict(self) -> dict[str, Any]:
        return {
            "opened_at_window": self.opened,
            "streak_started_at_window": self.first,
            "closed_at_window": self.closed,
        }


@dataclass
class RuleState:
    """Where a rule stands after reading windows: the incidents opened or closed in the windows read, and
    what the next window continues from (stored between live evaluations, so none replays history)."""

    incidents: list[Incident] = field(default_factory=list)
    streak: int = 0  # consecutive judged windows the condition held in, with no incident open
    streak_start: int | None = None
    calm: int = 0  # consecutive calm windows while an incident is open
    open: Incident | None = None
    cooldown_left: int = 0
    skipped_last: str | None = None  # why the last window did not count, when it did not
    last_holds: bool = False
    last_seq: int | None = None  # the newest record of the last window read (the same evidence is read once)

    def carried(self) -> dict[str, Any]:
        """What the next evaluation needs, as JSON (the incidents are stored as alerts)."""
        kept = {k: v for k, v in asdict(self).items() if k != "incidents"}
        return kept

    @classmethod
    def resume(cls, carried: dict[str, Any]) -> RuleState:
        values = dict(carried)
        values["open"] = Incident(**values["open"]) if values.get("open") else None
        return cls(**values)

    def explain(self, rule: AlertRule, window_name: Callable[[int], int] = lambda i: i) -> str:
        """One sentence a person can act on (`window_name`: how a person knows the window the state names)."""
        parts = []
        if self.skipped_last is not None:
            parts.append(f"the last window {self.skipped_last}, so it neither counts nor breaks a streak")
        if self.open is not None:
            parts.append(
                f"an incident is open since window {window_name(self.open.opened)}; it resolves after "
                f"{rule.resolve_after or rule.for_windows} calm windows in a row"
            )
        elif self.cooldown_left > 0:
            parts.append(
                f"in cooldown after the last incident: {self.cooldown_left} more judged window(s) before a new "
                "one may fire"
            )
        elif self.streak > 0:
            parts.append(
                f"streak {self.streak} of {rule.for_windows}: the condition held in {self.streak} window(s) in a row; "
                f"it fires at {rule.for_windows}"
            )
        else:
            parts.append("the condition did not hold in the last judged window")
        return "; ".join(parts)


def incidents(rule: AlertRule, windows: Sequence[WindowResult]) -> list[Incident]:
    """Replay `rule` over windows in order; every incident it would have raised."""
    return replay(rule, windows).incidents


def replay(
    rule: AlertRule,
    windows: Sequence[WindowResult],
    *,
    ids: Sequence[int] | None = None,
    state: RuleState | None = None,
) -> RuleState:
    """Read windows in order, from `state` (a fresh rule when None): the state the rule is left in, whose
    `incidents` are those that opened or closed in these windows. `ids` name the windows (default: their
    index)."""
    names = list(ids) if ids is not None else list(range(len(windows)))
    now = RuleState(**{**asdict(state), "incidents": []}) if state is not None else RuleState()
    if state is not None:
        now.open = state.open  # the same object: closing it below closes the carried incident
    resolve_after = rule.resolve_after or rule.for_windows
    for name, window in zip(names, windows, strict=True):
        if window.status == "not enough data":
            now.skipped_last = f"held {window.size} records, too few for the monitor to judge (its min_size)"
            continue
        if window.size < rule.min_size:
            now.skipped_last = f"held {window.size} records, under the rule's min_size of {rule.min_size}"
            continue
        now.skipped_last = None
        now.last_holds = holds = rule.when.holds(window)
        if now.open is not None:
            now.calm = 0 if holds else now.calm + 1
            if now.calm >= resolve_after:
                now.open.closed = name
                if now.open not in now.incidents:
                    now.incidents.append(now.open)
                now.open, now.cooldown_left, now.streak, now.streak_start = None, rule.cooldown_windows, 0, None
            continue
        if now.cooldown_left > 0:
            now.cooldown_left -= 1
            continue
        if holds:
            now.streak_start = name if now.streak == 0 else now.streak_start
            now.streak += 1
            if now.streak >= rule.for_windows:
                now.open = Incident(opened=name, first=now.streak_start if now.streak_start is not None else name)
                now.incidents.append(now.open)
                now.calm, now.streak, now.streak_start = 0, 0, None
        else:
            now.streak, now.streak_start = 0, None
    return now
