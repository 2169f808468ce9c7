"""Monitors declared with `tuneloop monitor add`, and the windows they judged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store, Transaction
from tuneloop.store.records import ModelSlice, in_slice
from tuneloop.store.tables import monitor_cursors, monitor_windows, monitors, records


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
    first_seq: int | None = None  # the oldest record a count window held (None before migration 0006)
    start: datetime | None = None  # bounds of a time window
    end: datetime | None = None
    late: int = 0  # records that arrived for this time window after it was judged
    rejudged: bool = False  # a `monitor check --latest` look: no cursor move, no alert evidence


@dataclass(frozen=True)
class WindowPlace:
    """Where a window lies in the monitor's stream of records, as the store keeps it."""

    last_seq: int
    first_seq: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    rejudged: bool = False


def _monitor(row: Any) -> MonitorRow:
    return MonitorRow(row.name, row.spec, row.reference_sha256, row.mlflow_run_id, row.created_at)


def _window(row: Any) -> JudgedWindow:
    return JudgedWindow(int(row.id), row.monitor, int(row.last_seq), row.size, WindowStatus(row.status),
                        list(row.drifted_checks), row.checks, row.checked_at,
                        int(row.first_seq) if row.first_seq is not None else None, row.window_start, row.window_end,
                        int(row.late), bool(row.rejudged))


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

    def add_window(self, monitor: str, place: WindowPlace, *, size: int, status: str, drifted_checks: list[str],
                   checks: list[dict[str, Any]]) -> tuple[int, int]:
        """Record a judged window; (its id, its step: how many windows the monitor judged before it)."""
        with self.engine.begin() as conn:
            window_id = conn.execute(monitor_windows.insert().values(
                monitor=monitor, last_seq=place.last_seq, first_seq=place.first_seq, window_start=place.start,
                window_end=place.end, rejudged=place.rejudged, size=size, status=WindowStatus(status),
                drifted_checks=drifted_checks, checks=checks, checked_at=datetime.now(UTC))).inserted_primary_key[0]
            step = conn.execute(sa.select(sa.func.count()).select_from(monitor_windows)
                                .where(monitor_windows.c.monitor == monitor)).scalar_one() - 1
        return int(window_id), int(step)

    def windows(self, monitor: str, *, after_id: int = 0, counted_only: bool = False,
                tx: Transaction | None = None) -> list[JudgedWindow]:
        """The monitor's windows after window `after_id`, oldest first (`counted_only`: without `--latest` looks)."""
        query = sa.select(monitor_windows).where(monitor_windows.c.monitor == monitor, monitor_windows.c.id > after_id)
        if counted_only:
            query = query.where(monitor_windows.c.rejudged == sa.false())
        query = query.order_by(monitor_windows.c.id)
        if tx is not None:
            return [_window(r) for r in tx.execute(query)]
        with self.engine.connect() as conn:
            return [_window(r) for r in conn.execute(query)]

    def recent(self, monitor: str, limit: int) -> tuple[int, list[JudgedWindow]]:
        """(how many windows the monitor judged, its newest `limit` windows oldest first)."""
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(monitor_windows)
                                 .where(monitor_windows.c.monitor == monitor)).scalar_one()
            rows = conn.execute(sa.select(monitor_windows).where(monitor_windows.c.monitor == monitor)
                                .order_by(monitor_windows.c.id.desc()).limit(limit))
            newest = [_window(r) for r in rows]
        newest.reverse()
        return int(total), newest

    def step_of(self, monitor: str, window_id: int) -> int:
        """The window's step in the monitor's MLflow run: how many of its windows came before it."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(monitor_windows).where(
                monitor_windows.c.monitor == monitor, monitor_windows.c.id < window_id)).scalar_one())

    def last_window(self, monitor: str, *, counted_only: bool = False) -> JudgedWindow | None:
        query = sa.select(monitor_windows).where(monitor_windows.c.monitor == monitor)
        if counted_only:
            query = query.where(monitor_windows.c.rejudged == sa.false())
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(monitor_windows.c.id.desc()).limit(1)).first()
        return _window(row) if row else None

    def count_late(self, monitor: str, watched: ModelSlice, *, upto_seq: int) -> int:
        """Count the records of `watched` that arrived since the last call (up to `upto_seq`) for time windows
        the monitor already judged, on those windows; how many such records there were."""
        with self.engine.begin() as conn:
            seen = conn.execute(sa.select(monitor_cursors.c.seen_seq).where(monitor_cursors.c.monitor == monitor)).scalar()
            if seen is None:
                conn.execute(monitor_cursors.insert().values(monitor=monitor, seen_seq=upto_seq))
                return 0  # the first look: whatever is stored now is on time
            if upto_seq <= seen:
                return 0
            arrived = sa.and_(in_slice(watched), records.c.seq > seen, records.c.seq <= upto_seq)
            late_in = (sa.select(sa.func.count()).select_from(records)
                       .where(arrived, records.c.ts >= monitor_windows.c.window_start, records.c.ts < monitor_windows.c.window_end)
                       .scalar_subquery())
            judged = sa.and_(monitor_windows.c.monitor == monitor, monitor_windows.c.window_start.is_not(None),
                             monitor_windows.c.rejudged == sa.false(),
                             monitor_windows.c.window_end > sa.select(sa.func.min(records.c.ts)).where(arrived).scalar_subquery())
            conn.execute(monitor_windows.update().where(judged).values(late=monitor_windows.c.late + late_in))
            newest_end = conn.execute(sa.select(sa.func.max(monitor_windows.c.window_end)).where(
                monitor_windows.c.monitor == monitor, monitor_windows.c.rejudged == sa.false())).scalar()
            late = 0
            if newest_end is not None:
                late = int(conn.execute(sa.select(sa.func.count()).select_from(records)
                                        .where(arrived, records.c.ts < newest_end)).scalar_one())
            conn.execute(monitor_cursors.update().where(monitor_cursors.c.monitor == monitor).values(seen_seq=upto_seq))
        return late
