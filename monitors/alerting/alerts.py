"""Alerts: rules stored with `tuneloop alerts add`, evaluated after each judged window.

`evaluate(rc, monitor, version)` reads each of the monitor's rules over the windows of the watched
model version judged since it last read (`alert_rules.replay`, the same pure function `monitor
backtest --alert` uses, continued from the rule's stored state) and reconciles the result with the
`alerts` table: a new incident becomes one row, an incident that closed is marked resolved. When the
monitored alias moved to another version, an incident still open is closed as `superseded` and the
rule's streak starts afresh on the new version's windows. The state, the alerts and their notifications commit
together, and rows are keyed by (rule, window that fired), so evaluating again — after a crash, or
from a second process — never opens an incident twice. Each change queues notifications in the same
transaction and is mirrored to MLflow (experiment `<prefix>alerts`, one run per alert).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tuneloop.errors import Conflict, NotFound
from tuneloop.monitors import tenures
from tuneloop.monitors.alerting import notify
from tuneloop.monitors.alerting.rules import AlertRule, Incident, RuleState, load_rule, replay
from tuneloop.monitors.drift.checks import WindowResult
from tuneloop.monitors.monitor_spec import MonitorSpec
from tuneloop.names import Experiment, RunTag
from tuneloop.registry.client import RegistryClient
from tuneloop.store import Stores, Transaction
from tuneloop.store.alerts import AlertStatus


@dataclass
class AlertChange:
    alert_id: int
    rule: str
    kind: str  # opened | resolved | superseded


def add_rule(rc: RegistryClient, path: Path, *, replace: bool = False) -> dict[str, Any]:
    rule = load_rule(path)
    if rule.monitor is None:
        raise Conflict(
            f"alert rule `{rule.name}` names no `monitor`", hint="add `monitor: NAME` (see `tuneloop monitor status`)"
        )
    if rc.stores.monitors.get(rule.monitor) is None:
        raise NotFound(
            f"alert rule `{rule.name}` watches monitor `{rule.monitor}`, which does not exist",
            hint="add the monitor first: `tuneloop monitor add FILE`",
        )
    if not rc.stores.alerts.save_rule(rule.name, rule.monitor, rule.model_dump(mode="json"), replace=replace):
        raise Conflict(f"alert rule `{rule.name}` exists", hint="pass --replace to update it")
    return {
        "rule": rule.name,
        "monitor": rule.monitor,
        "when": rule.when.model_dump(exclude_none=True),
        "condition": rule.when.describe(),
        "for_windows": rule.for_windows,
        "severity": rule.severity,
        "webhooks": len(rule.webhooks),
    }


def rules_of(rc: RegistryClient, monitor: str | None = None) -> list[AlertRule]:
    return [AlertRule.model_validate(row.spec) for row in rc.stores.alerts.rules(monitor)]


def evaluate(rc: RegistryClient, monitor: str, version: int | None = None) -> list[AlertChange]:
    """Reconcile the alerts of `monitor` with the windows of model `version` (default: the version it
    watches now) judged since each rule last read; what opened, resolved or was superseded now. Each rule
    continues from its stored state, so the cost does not grow with the monitor's age."""
    from tuneloop.monitors.service import judged_windows

    rules = rules_of(rc, monitor)
    watched = rc.stores.monitors.get(monitor)
    if not rules or watched is None:
        return []
    changes: list[AlertChange] = []
    model = watched.spec["model"]
    if version is None:
        version = tenures.holder(rc, MonitorSpec.model_validate(watched.spec)).version
    with rc.stores.transaction(lock=f"alerts:{monitor}") as tx:
        for rule in rules:
            saved = rc.stores.alerts.rule_state(tx, rule.name)
            moved = saved is not None and saved.version is not None and saved.version != version
            if moved:
                assert saved is not None and saved.version is not None
                changes += _supersede(rc.stores, tx, rule, saved.version, version)
            state = RuleState.resume(saved.state) if saved and not moved else None
            ids, windows, last_seq = judged_windows(
                rc,
                monitor,
                after_id=saved.last_window_id if saved else 0,
                previous_seq=state.last_seq if state else None,
                version=version,
                tx=tx,
            )
            if not ids:
                continue
            now = replay(rule, windows, ids=ids, state=state)
            now.last_seq = last_seq
            known = {alert.opened_window_id: alert for alert in rc.stores.alerts.of_rule(tx, rule.name)}
            for incident in now.incidents:
                alert = known.get(incident.opened)
                if alert is None:
                    streak_ids, streak, _ = judged_windows(
                        rc, monitor, after_id=incident.first - 1, version=version, tx=tx
                    )
                    in_streak = {i: w for i, w in zip(streak_ids, streak, strict=True) if i <= incident.opened}
                    alert_id = _open(rc.stores, tx, rule, model, version, in_streak, incident)
                    changes.append(AlertChange(alert_id, rule.name, "opened"))
                    alert_open = True
                else:
                    alert_id, alert_open = alert.id, alert.status == AlertStatus.OPEN
                if incident.closed is not None and alert_open:
                    _resolve(rc.stores, tx, rule, alert_id, incident.closed)
                    changes.append(AlertChange(alert_id, rule.name, "resolved"))
            rc.stores.alerts.save_rule_state(tx, rule.name, ids[-1], now.carried(), version=version)
    for change in changes:
        mirror(rc, change.alert_id)
    _mirror_missing(rc)
    return changes


def explain_rules(rc: RegistryClient, monitor: str) -> list[dict[str, str]]:
    """[{rule, state}] for each rule on `monitor`: where it stands and why it did (not) fire, as last evaluated."""
    out = []
    for rule in rules_of(rc, monitor):
        saved = rc.stores.alerts.rule_state(None, rule.name)
        state = (
            RuleState.resume(saved.state).explain(rule, partial(rc.stores.monitors.step_of, monitor))
            if saved
            else "no judged window yet"
        )  # windows named by their MLflow step, as users see them
        out.append({"rule": rule.name, "monitor": monitor, "state": state})
    return out


def _supersede(stores: Stores, tx: Transaction, rule: AlertRule, old: int, new: int) -> list[AlertChange]:
    """Close the rule's open incidents on version `old`: the alias it watches now points at `new`."""
    changes = []
    for alert in stores.alerts.of_rule(tx, rule.name):
        if alert.status != AlertStatus.OPEN:
            continue
        stores.alerts.supersede(tx, alert.id)
        message = (
            f"{rule.name}: alert {alert.id} superseded — {alert.model} moved from version {old} to {new}; "
            f"the new version is watched afresh"
        )
        notify.enqueue(
            stores,
            tx,
            "alert.superseded",
            {
                "alert_id": alert.id,
                "rule": rule.name,
                "monitor": rule.monitor,
                "model": alert.model,
                "from_version": old,
                "to_version": new,
                "message": message,
            },
            rule.webhooks,
            alert_id=alert.id,
        )
        changes.append(AlertChange(alert.id, rule.name, "superseded"))
    return changes


def _open(
    stores: Stores,
    tx: Transaction,
    rule: AlertRule,
    model: str,
    version: int,
    windows: dict[int, WindowResult],
    incident: Incident,
) -> int:
    streak = list(windows)  # the streak's windows, first to the one that fired
    drifted = sorted({name for i in streak for name in windows[i].drifted_checks})
    condition = rule.when.model_dump(exclude_none=True)
    summary = {
        "condition": condition,
        "for_windows": rule.for_windows,
        "version": version,
        "window_ids": streak,
        "drifted_checks": drifted,
        "window_sizes": [windows[i].size for i in streak],
    }
    assert rule.monitor is not None
    alert_id = stores.alerts.open(
        tx,
        rule=rule.name,
        monitor=rule.monitor,
        model=model,
        severity=rule.severity,
        opened_window_id=incident.opened,
        first_window_id=incident.first,
        summary=summary,
    )
    message = (
        f"[{rule.severity}] {rule.name}: monitor {rule.monitor} ({model}) held {condition} for "
        f"{rule.for_windows} window(s); drifted: {', '.join(drifted) or '-'}"
    )
    notify.enqueue(
        stores,
        tx,
        "alert.opened",
        {
            "alert_id": alert_id,
            "rule": rule.name,
            "monitor": rule.monitor,
            "model": model,
            "severity": rule.severity,
            "message": message,
            **summary,
        },
        rule.webhooks,
        alert_id=alert_id,
    )
    return alert_id


def _resolve(stores: Stores, tx: Transaction, rule: AlertRule, alert_id: int, closed_window_id: int) -> None:
    stores.alerts.resolve(tx, alert_id, closed_window_id)
    notify.enqueue(
        stores,
        tx,
        "alert.resolved",
        {
            "alert_id": alert_id,
            "rule": rule.name,
            "monitor": rule.monitor,
            "message": f"{rule.name} resolved (alert {alert_id})",
        },
        rule.webhooks,
        alert_id=alert_id,
    )


def mirror(rc: RegistryClient, alert_id: int) -> str:
    """Create or update the alert's MLflow run (tags, alert.json); its run id."""
    from tuneloop.registry.tracking import experiment_id

    alert = get(rc, alert_id)
    tags = {
        RunTag.ALERT_ID: str(alert_id),
        RunTag.ALERT_RULE: alert["rule"],
        RunTag.ALERT_MONITOR: alert["monitor"],
        RunTag.ALERT_MODEL: alert["model"],
        RunTag.ALERT_SEVERITY: alert["severity"],
        RunTag.ALERT_STATUS: alert["status"],
    }
    run_id = alert["mlflow_run_id"]
    if run_id is None:
        run = rc.mlflow.create_run(
            experiment_id(rc.mlflow, rc.settings, Experiment.ALERTS),
            run_name=f"alert {alert_id}: {alert['rule']}",
            tags=tags,
        )
        run_id = str(run.info.run_id)
        rc.mlflow.log_param(run_id, "condition", json.dumps(alert["summary"]["condition"]))
        rc.mlflow.set_terminated(run_id, "FINISHED")
        rc.stores.alerts.set_mirror(alert_id, run_id)
    else:
        for key, value in tags.items():
            rc.mlflow.set_tag(run_id, key, value)
    public = {k: v for k, v in alert.items() if k != "notifications"}
    rc.mlflow.log_text(run_id, json.dumps(public, indent=2, default=str), "alert.json")
    return run_id


def _mirror_missing(rc: RegistryClient) -> None:
    """Mirror alerts whose MLflow run was never created (MLflow was down when they opened)."""
    for alert_id in rc.stores.alerts.unmirrored():
        mirror(rc, alert_id)


def get(rc: RegistryClient, alert_id: int) -> dict[str, Any]:
    alert = rc.stores.alerts.get(alert_id)
    if alert is None:
        raise NotFound(f"no alert {alert_id}", hint="`tuneloop alerts list` shows them")
    return alert.as_dict()


def list_alerts(rc: RegistryClient, *, status: str | None = None, monitor: str | None = None) -> list[dict[str, Any]]:
    wanted = AlertStatus(status) if status else None
    return [alert.as_dict() for alert in rc.stores.alerts.all(status=wanted, monitor=monitor)]
