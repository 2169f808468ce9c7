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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from tuneloop.monitors.checks import WindowResult

from tuneloop.yaml_models import Strict, load_yaml_model


class Condition(Strict):
    drift: str | None = Field(None, description="`any`, or a check name or glob (e.g. `output.refusal`, `prompt.*`) that drifted")
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
    resolve_after: int | None = Field(None, ge=1, le=1000, description="Consecutive calm windows that close an incident (default: for_windows)")
    cooldown_windows: int = Field(0, ge=0, le=100_000, description="Windows after an incident closes before a new one may fire")
    min_size: int = Field(1, ge=1, description="Windows with fewer records are skipped")
    severity: Literal["info", "warning", "critical"] = "warning"
    webhooks: list[str] = Field(default_factory=list, description="URLs that get a JSON POST when an incident opens "
                                "or resolves (retried with backoff); they may carry tokens, so they are never logged")

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
    opened: int  # index of the window that fired the alert
    first: int  # first window of the streak that led to it
    closed: int | None = None  # index of the window that closed it; None while open

    def as_dict(self) -> dict[str, Any]:
        return {"opened_at_window": self.opened, "streak_started_at_window": self.first, "closed_at_window": self.closed}


@dataclass
class RuleState:
    """Where a rule stands after replaying windows: its incidents, and why the last windows did or did not fire."""

    incidents: list[Incident]
    streak: int = 0  # consecutive judged windows the condition held in, with no incident open
    cooldown_left: int = 0
    skipped_last: str | None = None  # why the last window did not count, when it did not
    last_holds: bool = False

    def explain(self, rule: AlertRule) -> str:
        """One sentence a person can act on."""
        open_incident = self.incidents[-1] if self.incidents and self.incidents[-1].closed is None else None
        parts = []
        if self.skipped_last is not None:
            parts.append(f"the last window {self.skipped_last}, so it neither counts nor breaks a streak")
        if open_incident is not None:
            parts.append(f"an incident is open since window {open_incident.opened}; it resolves after "
                         f"{rule.resolve_after or rule.for_windows} calm windows in a row")
        elif self.cooldown_left > 0:
            parts.append(f"in cooldown after the last incident: {self.cooldown_left} more judged window(s) before a new "
                         "one may fire")
        elif self.streak > 0:
            parts.append(f"streak {self.streak} of {rule.for_windows}: the condition held in {self.streak} window(s) in a row; "
                         f"it fires at {rule.for_windows}")
        else:
            parts.append("the condition did not hold in the last judged window")
        return "; ".join(parts)


def incidents(rule: AlertRule, windows: Sequence[WindowResult]) -> list[Incident]:
    """Replay `rule` over windows in order; every incident it would have raised."""
    return replay(rule, windows).incidents


def replay(rule: AlertRule, windows: Sequence[WindowResult]) -> RuleState:
    """Replay `rule` over windows in order: its incidents and the state it is left in."""
    found: list[Incident] = []
    streak_start: int | None = None
    streak = calm = 0
    open_incident: Incident | None = None
    cooldown_left = 0
    skipped_last: str | None = None
    holds = False
    resolve_after = rule.resolve_after or rule.for_windows
    for index, window in enumerate(windows):
        if window.status == "not enough data":
            skipped_last = f"held {window.size} records, too few for the monitor to judge (its min_size)"
            continue
        if window.size < rule.min_size:
            skipped_last = f"held {window.size} records, under the rule's min_size of {rule.min_size}"
            continue
        skipped_last = None
        holds = rule.when.holds(window)
        if open_incident is not None:
            calm = 0 if holds else calm + 1
            if calm >= resolve_after:
                open_incident.closed, open_incident = index, None
                cooldown_left, streak, streak_start = rule.cooldown_windows, 0, None
            continue
        if cooldown_left > 0:
            cooldown_left -= 1
            continue
        if holds:
            streak_start = index if streak == 0 else streak_start
            streak += 1
            if streak >= rule.for_windows:
                open_incident = Incident(opened=index, first=streak_start if streak_start is not None else index)
                found.append(open_incident)
                calm = 0
        else:
            streak, streak_start = 0, None
    return RuleState(incidents=found, streak=streak if open_incident is None else 0, cooldown_left=cooldown_left,
                     skipped_last=skipped_last, last_holds=holds)
