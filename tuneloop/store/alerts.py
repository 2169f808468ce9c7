"""Alert rules declared with `tuneloop alerts add`, and alerts: one row per incident, never per window.

(rule, opened_window_id) is unique, so two evaluators replaying the same windows cannot open the same
incident twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store, Transaction, entity
from tuneloop.store.declared import save_declared
from tuneloop.store.tables import alert_rule_states, alert_rules, alerts


class AlertStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    SUPERSEDED = "superseded"  # the monitored alias moved to another version while the incident was open


@dataclass(frozen=True)
class RuleStateRow:
    last_window_id: int  # the last window the rule read
    state: dict[str, Any]  # its replay state
    version: int | None  # the model version whose windows its streak counts (None: saved before 0007)


@dataclass(frozen=True)
class AlertRuleRow:
    name: str
    monitor: str
    spec: dict[str, Any]  # the validated rule YAML


@dataclass(frozen=True)
class Alert:
    id: int
    rule: str
    monitor: str
    model: str
    severity: str
    status: AlertStatus
    opened_window_id: int
    first_window_id: int
    closed_window_id: int | None
    summary: dict[str, Any]  # what held, drifted checks per window
    opened_at: datetime
    closed_at: datetime | None
    mlflow_run_id: str | None  # the mirror; filled once MLflow has it

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        out["opened_at"] = self.opened_at.isoformat()
        out["closed_at"] = self.closed_at.isoformat() if self.closed_at else None
        return out


def _alert(row: Any) -> Alert:
    return entity(Alert, row)


class AlertStore(Store):
    def save_rule(self, name: str, monitor: str, spec: dict[str, Any], *, replace: bool) -> bool:
        """Store rule `name`; False when it exists and `replace` is not given (nothing changed)."""
        saved = save_declared(self.engine, alert_rules, name, {"monitor": monitor, "spec": spec}, replace=replace)
        if saved:  # a changed rule reads its monitor's windows afresh
            with self.engine.begin() as conn:
                conn.execute(alert_rule_states.delete().where(alert_rule_states.c.rule == name))
        return saved

    def rule_state(self, tx: Transaction | None, rule: str) -> RuleStateRow | None:
        """Where the rule stands, or None before its first evaluation."""
        query = sa.select(
            alert_rule_states.c.last_window_id, alert_rule_states.c.state, alert_rule_states.c.version
        ).where(alert_rule_states.c.rule == rule)
        if tx is None:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        else:
            row = tx.execute(query).first()
        return RuleStateRow(int(row[0]), row[1], int(row[2]) if row[2] is not None else None) if row else None

    def save_rule_state(
        self, tx: Transaction, rule: str, last_window_id: int, state: dict[str, Any], *, version: int
    ) -> None:
        values = {"last_window_id": last_window_id, "state": state, "version": version}
        if (
            tx.execute(alert_rule_states.update().where(alert_rule_states.c.rule == rule).values(**values)).rowcount
            == 0
        ):
            tx.execute(alert_rule_states.insert().values(rule=rule, **values))

    def rules(self, monitor: str | None = None) -> list[AlertRuleRow]:
        query = sa.select(alert_rules.c.name, alert_rules.c.monitor, alert_rules.c.spec).order_by(alert_rules.c.name)
        if monitor is not None:
            query = query.where(alert_rules.c.monitor == monitor)
        with self.engine.connect() as conn:
            return [AlertRuleRow(*row) for row in conn.execute(query)]

    def of_rule(self, tx: Transaction, rule: str) -> list[Alert]:
        return [_alert(r) for r in tx.execute(sa.select(alerts).where(alerts.c.rule == rule))]

    def open(
        self,
        tx: Transaction,
        *,
        rule: str,
        monitor: str,
        model: str,
        severity: str,
        opened_window_id: int,
        first_window_id: int,
        summary: dict[str, Any],
    ) -> int:
        what = {"rule": rule, "monitor": monitor, "model": model, "severity": severity, "summary": summary}
        windows = {"opened_window_id": opened_window_id, "first_window_id": first_window_id}
        row = alerts.insert().values(**what, **windows, status=AlertStatus.OPEN, opened_at=datetime.now(UTC))
        return int(tx.execute(row).inserted_primary_key[0])

    def resolve(self, tx: Transaction, alert_id: int, closed_window_id: int) -> None:
        tx.execute(
            alerts.update()
            .where(alerts.c.id == alert_id)
            .values(status=AlertStatus.RESOLVED, closed_window_id=closed_window_id, closed_at=datetime.now(UTC))
        )

    def supersede(self, tx: Transaction, alert_id: int) -> None:
        tx.execute(
            alerts.update()
            .where(alerts.c.id == alert_id)
            .values(status=AlertStatus.SUPERSEDED, closed_at=datetime.now(UTC))
        )

    def set_mirror(self, alert_id: int, run_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(alerts.update().where(alerts.c.id == alert_id).values(mlflow_run_id=run_id))

    def get(self, alert_id: int) -> Alert | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).first()
        return _alert(row) if row else None

    def all(
        self, *, status: AlertStatus | None = None, monitor: str | None = None, rules: list[str] | None = None
    ) -> list[Alert]:
        query = sa.select(alerts).order_by(alerts.c.id)
        if status:
            query = query.where(alerts.c.status == status)
        if monitor:
            query = query.where(alerts.c.monitor == monitor)
        if rules is not None:
            query = query.where(alerts.c.rule.in_(rules))
        with self.engine.connect() as conn:
            return [_alert(r) for r in conn.execute(query)]

    def unmirrored(self) -> list[int]:
        with self.engine.connect() as conn:
            return [
                int(i) for i in conn.execute(sa.select(alerts.c.id).where(alerts.c.mlflow_run_id.is_(None))).scalars()
            ]
