"""Judge a monitor's pending windows and reconcile its alerts: the one path the scheduler,
`tuneloop monitor check` and the demo take.

`check(rc, name)` judges every window that completed since the monitor's last judged one (see
`monitors.windowing` for where windows lie), counts records that arrived late for windows already
judged, and lets each alert rule read the new windows. With nothing pending it judges nothing and
reports the latest window's state. `latest=True` re-judges the newest records instead — a look logged
like any window, but no evidence for alert rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.monitors import service
from tuneloop.monitors.alerting import alerts
from tuneloop.monitors.alerting.alerts import AlertChange
from tuneloop.registry.client import RegistryClient


@dataclass
class CheckOutcome:
    monitor: str
    judged: list[dict[str, Any]]  # the windows judged now, oldest first
    latest: dict[str, Any] | None  # the newest window: judged now, or earlier when nothing was pending
    late: int = 0  # records that arrived for windows judged earlier: counted there, not judged
    alerts: list[AlertChange] = field(default_factory=list)
    rules: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alerts": [asdict(c) for c in self.alerts]}


def check(rc: RegistryClient, name: str, *, latest: bool = False, limit: int = 1000) -> CheckOutcome:
    if latest:
        judged, late, version, notes = [service.rejudge_latest(rc, name)], 0, None, []
    else:
        pending = service.judge_pending(rc, name, limit=limit)
        judged, late, version, notes = pending.judged, pending.late, pending.version, list(pending.notes)
    if version is None:
        version = judged[0]["version"]
    changes = alerts.evaluate(rc, name, version)
    newest: dict[str, Any] | None = judged[-1] if judged else None
    if not judged:
        last = rc.stores.monitors.last_window(name, counted_only=True, version=version)
        newest = service.window_dict(rc, name, last) if last is not None else None
        notes.append(f"nothing new was judged: {service.next_window(rc, name)}")
    if late:
        notes.append(f"{late} record(s) arrived after their window was judged: counted as late there, not judged")
    if len(judged) == limit:
        notes.append(f"judged the first {limit} pending windows; check again for the rest")
    return CheckOutcome(name, judged, newest, late, changes, alerts.explain_rules(rc, name), notes)
