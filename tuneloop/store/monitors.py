"""Monitors declared with `tuneloop monitor add`, and the windows they judged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store
from tuneloop.store.tables import monitor_windows, monitors


class WindowStatus(StrEnum):
    OK = "ok"
    DRIFT = "drift"
    NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class MonitorRow:
    name: str
    spec: dict[str, Any]  # the validated monitor YAML
    reference_sha256: str
    mlflow_run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class JudgedWindow:
    id: int
    monitor: str
    last_seq: int  # the newest record the window held
    size: int
    status: WindowStatus
    drifted_checks: list[str]
    checks: list[dict[str, Any]] | None  # per-check statistics; None for windows judged before they were stored
    checked_at: datetime


def _monitor(row: Any) -> MonitorRow:
    return MonitorRow(row.name, row.spec, row.reference_sha256, row.mlflow_run_id, row.created_at)


def _window(row: Any) -> JudgedWindow:
    return JudgedWindow(int(row.id), row.monitor, int(row.last_seq), row.size, WindowStatus(row.status),
                        list(row.drifted_checks), row.checks, row.checked_at)


class MonitorStore(Store):
    def get(self, name: str) -> MonitorRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(monitors).where(monitors.c.name == name)).first()
        return _monitor(row) if row else None

    def all(self) -> list[MonitorRow]:
        with self.engine.connect() as conn:
            return [_monitor(r) for r in conn.execute(sa.select(monitors).order_by(monitors.c.name))]

    def save(self, name: str, spec: dict[str, Any], reference_sha256: str, mlflow_run_id: str | None) -> None:
        """Insert the monitor, or replace what an existing one of that name holds."""
        values = {"spec": spec, "reference_sha256": reference_sha256, "mlflow_run_id": mlflow_run_id}
        with self.engine.begin() as conn:
            if conn.execute(sa.select(monitors.c.name).where(monitors.c.name == name)).first():
                conn.execute(monitors.update().where(monitors.c.name == name).values(**values))
            else:
                conn.execute(monitors.insert().values(name=name, created_at=datetime.now(UTC), **values))

    def add_window(self, monitor: str, *, last_seq: int, size: int, status: str, drifted_checks: list[str],
                   checks: list[dict[str, Any]]) -> tuple[int, int]:
        """Record a judged window; (its id, its step: how many windows the monitor judged before it)."""
        with self.engine.begin() as conn:
            window_id = conn.execute(monitor_windows.insert().values(
                monitor=monitor, last_seq=last_seq, size=size, status=WindowStatus(status), drifted_checks=drifted_checks,
                checks=checks, checked_at=datetime.now(UTC))).inserted_primary_key[0]
            step = conn.execute(sa.select(sa.func.count()).select_from(monitor_windows)
                                .where(monitor_windows.c.monitor == monitor)).scalar_one() - 1
        return int(window_id), int(step)

    def windows(self, monitor: str) -> list[JudgedWindow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(monitor_windows).where(monitor_windows.c.monitor == monitor)
                                .order_by(monitor_windows.c.id))
            return [_window(r) for r in rows]

    def last_window(self, monitor: str) -> JudgedWindow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(monitor_windows).where(monitor_windows.c.monitor == monitor)
                               .order_by(monitor_windows.c.id.desc()).limit(1)).first()
        return _window(row) if row else None

    def last_judged_seq(self, monitor: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(monitor_windows.c.last_seq))
                                    .where(monitor_windows.c.monitor == monitor)).scalar() or 0)
