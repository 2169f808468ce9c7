"""Alerts: rules stored with `tuneloop alerts add`, evaluated after each judged window.

`evaluate(rc, monitor)` replays each of the monitor's rules over every judged window
(`alert_rules.incidents`, the same pure function `monitor backtest --alert` uses) and reconciles the
result with the `alerts` table: a new incident becomes one row, an incident that closed is marked
resolved. Rows are keyed by (rule, window that fired), so replaying again — after a crash, or from a
second process — never opens an incident twice. Each change queues notifications in the same
transaction and is mirrored to MLflow (experiment `<prefix>alerts`, one run per alert).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from tuneloop.monitors import notify
from tuneloop.monitors.alert_rules import AlertRule, incidents, load_rule
from tuneloop.registry.client import RegistryClient

from tuneloop.errors import Conflict, NotFound
from tuneloop.store import tables
from tuneloop.store.engine import save_declared
from tuneloop.store.locks import locked

EXPERIMENT = "alerts"


@dataclass
class AlertChange:
    alert_id: int
    rule: str
    kind: str  # opened | resolved


def add_rule(rc: RegistryClient, path: Path, *, replace: bool = False) -> dict[str, Any]:
    rule = load_rule(path)
    if rule.monitor is None:
        raise Conflict(f"alert rule `{rule.name}` names no `monitor`", hint="add `monitor: NAME` (see `tuneloop monitor status`)")
    if rc.stores.monitors.get(rule.monitor) is None:
        raise NotFound(f"alert rule `{rule.name}` watches monitor `{rule.monitor}`, which does not exist",
                           hint="add the monitor first: `tuneloop monitor add FILE`")
    save_declared(rc.engine, tables.alert_rules, rule.name, {"monitor": rule.monitor, "spec": rule.model_dump_json()},
                  replace=replace, kind="alert rule")
    return {"rule": rule.name, "monitor": rule.monitor, "when": rule.when.model_dump(exclude_none=True),
            "condition": rule.when.describe(),
            "for_windows": rule.for_windows, "severity": rule.severity, "webhooks": len(rule.webhooks)}


def rules_of(rc: RegistryClient, monitor: str | None = None) -> list[AlertRule]:
    r = tables.alert_rules
    query = sa.select(r.c.spec).order_by(r.c.name)
    if monitor is not None:
        query = query.where(r.c.monitor == monitor)
    with rc.engine.connect() as conn:
        return [AlertRule.model_validate_json(spec) for (spec,) in conn.execute(query)]


def evaluate(rc: RegistryClient, monitor: str) -> list[AlertChange]:
    """Reconcile the alerts of `monitor` with its judged windows; what opened or resolved now."""
    from tuneloop.monitors.service import judged_windows

    rules = rules_of(rc, monitor)
    if not rules:
        return []
    ids, windows = judged_windows(rc, monitor)
    changes: list[AlertChange] = []
    a = tables.alerts
    watched = rc.stores.monitors.get(monitor)
    if watched is None:
        return []
    model = watched.spec["model"]
    with locked(rc.engine, f"alerts:{monitor}") as conn:
        for rule in rules:
            known = {row.opened_window_id: row for row in conn.execute(sa.select(a).where(a.c.rule == rule.name))}
            for incident in incidents(rule, windows):
                opened_id = ids[incident.opened]
                row = known.get(opened_id)
                if row is None:
                    alert_id = _open(conn, rule, model, ids, windows, incident)
                    changes.append(AlertChange(alert_id, rule.name, "opened"))
                elif incident.closed is not None and row.status == "open":
                    _resolve(conn, rule, row, ids[incident.closed])
                    changes.append(AlertChange(int(row.id), rule.name, "resolved"))
    for change in changes:
        mirror(rc, change.alert_id)
    _mirror_missing(rc)
    return changes


def explain_rules(rc: RegistryClient, monitor: str) -> list[dict[str, str]]:
    """[{rule, state}] for each rule on `monitor`: where it stands and why it did (not) fire."""
    from tuneloop.monitors.alert_rules import replay
    from tuneloop.monitors.service import judged_windows

    rules = rules_of(rc, monitor)
    if not rules:
        return []
    _, windows = judged_windows(rc, monitor)
    return [{"rule": rule.name, "monitor": monitor, "state": replay(rule, windows).explain(rule)} for rule in rules]


def _open(conn: sa.Connection, rule: AlertRule, model: str, ids: list[int], windows: list[Any], incident: Any) -> int:
    streak = range(incident.first, incident.opened + 1)
    drifted = sorted({name for i in streak for name in windows[i].drifted_checks})
    condition = rule.when.model_dump(exclude_none=True)
    summary = {"condition": condition, "for_windows": rule.for_windows, "window_ids": [ids[i] for i in streak],
               "drifted_checks": drifted, "window_sizes": [windows[i].size for i in streak]}
    now = datetime.now(UTC)
    alert_id = int(conn.execute(tables.alerts.insert().values(
        rule=rule.name, monitor=rule.monitor, model=model, severity=rule.severity, status="open",
        opened_window_id=ids[incident.opened], first_window_id=ids[incident.first], summary=json.dumps(summary),
        opened_at=now)).inserted_primary_key[0])
    message = (f"[{rule.severity}] {rule.name}: monitor {rule.monitor} ({model}) held {condition} for "
               f"{rule.for_windows} window(s); drifted: {', '.join(drifted) or '-'}")
    notify.enqueue(conn, "alert.opened", {"alert_id": alert_id, "rule": rule.name, "monitor": rule.monitor, "model": model,
                                          "severity": rule.severity, "message": message, **summary},
                   rule.webhooks, alert_id=alert_id)
    return alert_id


def _resolve(conn: sa.Connection, rule: AlertRule, row: Any, closed_window_id: int) -> None:
    conn.execute(tables.alerts.update().where(tables.alerts.c.id == row.id).values(
        status="resolved", closed_window_id=closed_window_id, closed_at=datetime.now(UTC)))
    notify.enqueue(conn, "alert.resolved", {"alert_id": int(row.id), "rule": rule.name, "monitor": rule.monitor,
                                            "message": f"{rule.name} resolved (alert {row.id})"},
                   rule.webhooks, alert_id=int(row.id))


def mirror(rc: RegistryClient, alert_id: int) -> str:
    """Create or update the alert's MLflow run (tags, alert.json); its run id."""
    from tuneloop.registry.tracking import experiment_id

    alert = get(rc, alert_id)
    tags = {"tuneloop.alert.id": str(alert_id), "tuneloop.alert.rule": alert["rule"], "tuneloop.alert.monitor": alert["monitor"],
            "tuneloop.alert.model": alert["model"], "tuneloop.alert.severity": alert["severity"],
            "tuneloop.alert.status": alert["status"]}
    run_id = alert["mlflow_run_id"]
    if run_id is None:
        run = rc.mlflow.create_run(experiment_id(rc.mlflow, rc.settings, EXPERIMENT),
                                   run_name=f"alert {alert_id}: {alert['rule']}", tags=tags)
        run_id = str(run.info.run_id)
        rc.mlflow.log_param(run_id, "condition", json.dumps(alert["summary"]["condition"]))
        rc.mlflow.set_terminated(run_id, "FINISHED")
        with rc.engine.begin() as conn:
            conn.execute(tables.alerts.update().where(tables.alerts.c.id == alert_id).values(mlflow_run_id=run_id))
    else:
        for key, value in tags.items():
            rc.mlflow.set_tag(run_id, key, value)
    public = {k: v for k, v in alert.items() if k != "notifications"}
    rc.mlflow.log_text(run_id, json.dumps(public, indent=2, default=str), "alert.json")
    return run_id


def _mirror_missing(rc: RegistryClient) -> None:
    """Mirror alerts whose MLflow run was never created (MLflow was down when they opened)."""
    with rc.engine.connect() as conn:
        missing = [i for (i,) in conn.execute(sa.select(tables.alerts.c.id).where(tables.alerts.c.mlflow_run_id.is_(None)))]
    for alert_id in missing:
        mirror(rc, int(alert_id))


def get(rc: RegistryClient, alert_id: int) -> dict[str, Any]:
    with rc.engine.connect() as conn:
        row = conn.execute(sa.select(tables.alerts).where(tables.alerts.c.id == alert_id)).mappings().first()
    if row is None:
        raise NotFound(f"no alert {alert_id}", hint="`tuneloop alerts list` shows them")
    return _public(row)


def list_alerts(rc: RegistryClient, *, status: str | None = None, monitor: str | None = None) -> list[dict[str, Any]]:
    a = tables.alerts
    query = sa.select(a).order_by(a.c.id)
    if status:
        query = query.where(a.c.status == status)
    if monitor:
        query = query.where(a.c.monitor == monitor)
    with rc.engine.connect() as conn:
        return [_public(row) for row in conn.execute(query).mappings()]


def _public(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["summary"] = json.loads(out["summary"])
    for key in ("opened_at", "closed_at"):
        out[key] = out[key].isoformat() if out[key] else None
    return out
