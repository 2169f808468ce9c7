"""Monitors declared with `tuneloop monitor add`, and the windows they judged."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store, Transaction, entity
from tuneloop.store.records import ModelSlice, in_slice
from tuneloop.store.tables import monitor_cursors, monitor_versions, monitor_windows, monitors, records


class WindowStatus(StrEnum):
    """A judged window's verdict: every check held, at least one drifted, or too few records to judge."""

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
    version: int | None = None  # the model version whose records it held (None: an empty window judged before 0007)


@dataclass(frozen=True)
class WindowPlace:
    """Where a window lies in the monitor's stream of records, as the store keeps it."""

    last_seq: int
    first_seq: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    rejudged: bool = False
    version: int | None = None


@dataclass(frozen=True)
class Tenure:
    """A model version a monitor watches, and the reference it is judged against."""

    monitor: str
    version: int
    reference_sha256: str | None  # None while a pinned-window reference is still forming
    reference_last_seq: int | None  # records up to this one are the version's reference: never judged
    reference_source: str | None
    started_at: datetime


def lowest_p_value(checks: list[dict[str, Any]] | None) -> float | None:
    """The smallest p-value of a window's checks (None when it has none)."""
    p_values = [c["p_value"] for c in checks or [] if c.get("p_value") is not None and not math.isnan(c["p_value"])]
    return min(p_values) if p_values else None


def _monitor(row: Any) -> MonitorRow:
    return entity(MonitorRow, row)


def _window(row: Any) -> JudgedWindow:
    return entity(
        JudgedWindow, row, drifted_checks=list(row.drifted_checks), start=row.window_start, end=row.window_end
    )


def _tenure(row: Any) -> Tenure:
    return entity(Tenure, row)


class MonitorStore(Store):
    def get(self, name: str) -> MonitorRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(monitors).where(monitors.c.name == name)).first()
        return _monitor(row) if row else None

    def all(self) -> list[MonitorRow]:
        with self.engine.connect() as conn:
            return [_monitor(r) for r in conn.execute(sa.select(monitors).order_by(monitors.c.name))]

    def save(
        self,
        name: str,
        spec: dict[str, Any],
        reference_sha256: str,
        mlflow_run_id: str | None,
        *,
        version: int,
        reference_source: str,
    ) -> None:
        """Insert the monitor, or replace what an existing one of that name holds; `version` (the watched
        version now) is judged against this reference, and every other version's reference is forgotten."""
        values = {"spec": spec, "reference_sha256": reference_sha256, "mlflow_run_id": mlflow_run_id}
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(monitors.c.name).where(monitors.c.name == name)).first():
                conn.execute(monitors.update().where(monitors.c.name == name).values(**values))
            else:
                conn.execute(monitors.insert().values(name=name, created_at=now, **values))
            conn.execute(monitor_versions.delete().where(monitor_versions.c.monitor == name))
            reference = {"reference_sha256": reference_sha256, "reference_source": reference_source}
            conn.execute(monitor_versions.insert().values(monitor=name, version=version, started_at=now, **reference))

    def tenure(self, monitor: str, version: int) -> Tenure | None:
        """What the monitor knows of `version`, if it ever watched it."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(monitor_versions).where(
                    monitor_versions.c.monitor == monitor, monitor_versions.c.version == version
                )
            ).first()
        return _tenure(row) if row else None

    def tenures(self, monitor: str) -> list[Tenure]:
        """Every version the monitor watched, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(monitor_versions)
                .where(monitor_versions.c.monitor == monitor)
                .order_by(monitor_versions.c.started_at, monitor_versions.c.version)
            )
            return [_tenure(r) for r in rows]

    def start_tenure(
        self,
        monitor: str,
        version: int,
        *,
        reference_sha256: str | None,
        reference_last_seq: int | None,
        reference_source: str | None,
    ) -> Tenure:
        """Record that the monitor now watches `version` (or update its reference); the row as stored."""
        values = {
            "reference_sha256": reference_sha256,
            "reference_last_seq": reference_last_seq,
            "reference_source": reference_source,
        }
        with self.engine.begin() as conn:
            where = sa.and_(monitor_versions.c.monitor == monitor, monitor_versions.c.version == version)
            if conn.execute(monitor_versions.update().where(where).values(**values)).rowcount == 0:
                conn.execute(
                    monitor_versions.insert().values(
                        monitor=monitor, version=version, started_at=datetime.now(UTC), **values
                    )
                )
            return _tenure(conn.execute(sa.select(monitor_versions).where(where)).one())

    def add_window(
        self,
        monitor: str,
        place: WindowPlace,
        *,
        size: int,
        status: str,
        drifted_checks: list[str],
        checks: list[dict[str, Any]],
    ) -> tuple[int, int]:
        """Record a judged window; (its id, its step: how many windows the monitor judged before it)."""
        with self.engine.begin() as conn:
            window_id = conn.execute(
                monitor_windows.insert().values(
                    monitor=monitor,
                    last_seq=place.last_seq,
                    first_seq=place.first_seq,
                    window_start=place.start,
                    window_end=place.end,
                    rejudged=place.rejudged,
                    version=place.version,
                    size=size,
                    status=WindowStatus(status),
                    drifted_checks=drifted_checks,
                    checks=checks,
                    lowest_p=lowest_p_value(checks),
                    checked_at=datetime.now(UTC),
                )
            ).inserted_primary_key[0]
            step = (
                conn.execute(
                    sa.select(sa.func.count()).select_from(monitor_windows).where(monitor_windows.c.monitor == monitor)
                ).scalar_one()
                - 1
            )
        return int(window_id), int(step)

    def windows(
        self,
        monitor: str,
        *,
        after_id: int = 0,
        counted_only: bool = False,
        version: int | None = None,
        tx: Transaction | None = None,
    ) -> list[JudgedWindow]:
        """The monitor's windows after window `after_id`, oldest first (`counted_only`: without `--latest` looks;
        `version`: only those of that model version)."""
        query = sa.select(monitor_windows).where(monitor_windows.c.monitor == monitor, monitor_windows.c.id > after_id)
        if version is not None:
            query = query.where(monitor_windows.c.version == version)
        if counted_only:
            query = query.where(monitor_windows.c.rejudged == sa.false())
        query = query.order_by(monitor_windows.c.id)
        if tx is not None:
            return [_window(r) for r in tx.execute(query)]
        with self.engine.connect() as conn:
            return [_window(r) for r in conn.execute(query)]

    def recent_lowest_p(self, monitor: str, limit: int) -> tuple[int, list[float | None]]:
        """(how many windows the monitor judged, the smallest p-value of each of its newest `limit`, oldest first)."""
        with self.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(monitor_windows).where(monitor_windows.c.monitor == monitor)
            ).scalar_one()
            rows = conn.execute(
                sa.select(monitor_windows.c.id, monitor_windows.c.lowest_p)
                .where(monitor_windows.c.monitor == monitor)
                .order_by(monitor_windows.c.id.desc())
                .limit(limit)
            ).all()
            older = [window_id for window_id, p in rows if p is None]  # judged before 0007: read from their statistics
            stored: dict[int, Any] = {}
            if older:
                stored = dict(
                    conn.execute(
                        sa.select(monitor_windows.c.id, monitor_windows.c.checks).where(monitor_windows.c.id.in_(older))
                    ).all()
                )
        lowest = [p if p is not None else lowest_p_value(stored.get(window_id)) for window_id, p in rows]
        lowest.reverse()
        return int(total), lowest

    def at_step(self, monitor: str, step: int | None) -> tuple[int, JudgedWindow | None]:
        """(how many windows the monitor judged, its window at `step` — None: the newest — if there is one)."""
        with self.engine.connect() as conn:
            total = int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(monitor_windows).where(monitor_windows.c.monitor == monitor)
                ).scalar_one()
            )
            at = total - 1 if step is None else step
            if not 0 <= at < total:
                return total, None
            row = conn.execute(
                sa.select(monitor_windows)
                .where(monitor_windows.c.monitor == monitor)
                .order_by(monitor_windows.c.id)
                .offset(at)
                .limit(1)
            ).first()
        return total, _window(row) if row else None

    def step_of(self, monitor: str, window_id: int) -> int:
        """The window's step in the monitor's MLflow run: how many of its windows came before it."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(monitor_windows)
                    .where(monitor_windows.c.monitor == monitor, monitor_windows.c.id < window_id)
                ).scalar_one()
            )

    def last_window(
        self, monitor: str, *, counted_only: bool = False, version: int | None = None
    ) -> JudgedWindow | None:
        """The monitor's newest window (`version`: of that model version; its cursor)."""
        query = sa.select(monitor_windows).where(monitor_windows.c.monitor == monitor)
        if version is not None:
            query = query.where(monitor_windows.c.version == version)
        if counted_only:
            query = query.where(monitor_windows.c.rejudged == sa.false())
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(monitor_windows.c.id.desc()).limit(1)).first()
        return _window(row) if row else None

    def count_late(self, monitor: str, watched: ModelSlice, *, upto_seq: int) -> int:
        """Count the records of `watched` that arrived since the last call (up to `upto_seq`) for time windows
        the monitor already judged, on those windows; how many such records there were."""
        with self.engine.begin() as conn:
            seen = conn.execute(
                sa.select(monitor_cursors.c.seen_seq).where(monitor_cursors.c.monitor == monitor)
            ).scalar()
            if seen is None:
                conn.execute(monitor_cursors.insert().values(monitor=monitor, seen_seq=upto_seq))
                return 0  # the first look: whatever is stored now is on time
            if upto_seq <= seen:
                return 0
            arrived = sa.and_(in_slice(watched), records.c.seq > seen, records.c.seq <= upto_seq)
            late_in = (
                sa.select(sa.func.count())
                .select_from(records)
                .where(
                    arrived, records.c.ts >= monitor_windows.c.window_start, records.c.ts < monitor_windows.c.window_end
                )
                .scalar_subquery()
            )
            judged = sa.and_(
                monitor_windows.c.monitor == monitor,
                monitor_windows.c.version == watched.version,
                monitor_windows.c.window_start.is_not(None),
                monitor_windows.c.rejudged == sa.false(),
                monitor_windows.c.window_end > sa.select(sa.func.min(records.c.ts)).where(arrived).scalar_subquery(),
            )
            conn.execute(monitor_windows.update().where(judged).values(late=monitor_windows.c.late + late_in))
            newest_end = conn.execute(
                sa.select(sa.func.max(monitor_windows.c.window_end)).where(
                    monitor_windows.c.monitor == monitor,
                    monitor_windows.c.version == watched.version,
                    monitor_windows.c.rejudged == sa.false(),
                )
            ).scalar()
            late = 0
            if newest_end is not None:
                late = int(
                    conn.execute(
                        sa.select(sa.func.count()).select_from(records).where(arrived, records.c.ts < newest_end)
                    ).scalar_one()
                )
            conn.execute(monitor_cursors.update().where(monitor_cursors.c.monitor == monitor).values(seen_seq=upto_seq))
        return late
