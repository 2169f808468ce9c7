"""Retraining policies declared with `tuneloop loop add`, and durable retraining runs.

A run is unique per trigger (`alert:<id>`, `cron:<loop>:<time>`, `manual:<uuid>`), so enqueuing twice
creates nothing. A cancelled run is terminal and never written again: its worker may still be finishing
a stage when a person ends it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store, Transaction, entity
from tuneloop.store.declared import save_declared
from tuneloop.store.tables import leases, loops, retrain_runs


class RunState(StrEnum):
    QUEUED = "queued"
    CURATING = "curating"
    TRAINING = "training"
    EVALUATING = "evaluating"
    SHADOWING = "shadowing"  # `promotion: after_shadow`: the challenger answers live prompts unseen until enough pairs
    REGISTERED = "registered"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (RunState.REGISTERED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True)
class LoopRow:
    name: str
    model: str
    spec: dict[str, Any]  # the validated loop YAML
    last_cron_at: datetime | None  # the last cron fire handled
    created_at: datetime


@dataclass(frozen=True)
class RetrainRun:
    id: int
    loop: str
    model: str
    trigger: str  # alert | cron | manual
    trigger_key: str
    alert_id: int | None
    champion_version: int | None
    state: RunState
    attempts: int
    training_run_id: str | None
    version: int | None
    details: dict[str, Any]  # data digests, eval runs, decision, progress
    error: str | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "state": str(self.state),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _run(row: Any) -> RetrainRun:
    return entity(RetrainRun, row, details=row.details or {})


class LoopStore(Store):
    # --- loops ----------------------------------------------------------------------------------
    def save_loop(self, name: str, model: str, spec: dict[str, Any], *, replace: bool) -> bool:
        """Store loop `name`; False when it exists and `replace` is not given (nothing changed)."""
        return save_declared(self.engine, loops, name, {"model": model, "spec": spec}, replace=replace)

    def loops(self) -> list[LoopRow]:
        with self.engine.connect() as conn:
            return [
                LoopRow(r.name, r.model, r.spec, r.last_cron_at, r.created_at)
                for r in conn.execute(sa.select(loops).order_by(loops.c.name))
            ]

    def loop(self, name: str) -> LoopRow | None:
        return next((row for row in self.loops() if row.name == name), None)

    def set_last_cron(self, name: str, at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(loops.update().where(loops.c.name == name).values(last_cron_at=at))

    # --- runs -----------------------------------------------------------------------------------
    def enqueue(
        self, *, loop: str, model: str, trigger: str, trigger_key: str, alert_id: int | None
    ) -> tuple[int, bool]:
        """(run id, created): a trigger that already has a run gets that run back."""
        r = retrain_runs
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                found = conn.execute(sa.select(r.c.id).where(r.c.trigger_key == trigger_key)).scalar()
                if found is not None:
                    return int(found), False
                why = {
                    "loop": loop,
                    "model": model,
                    "trigger": trigger,
                    "trigger_key": trigger_key,
                    "alert_id": alert_id,
                }
                fresh = {"state": RunState.QUEUED, "attempts": 0, "details": {}, "created_at": now, "updated_at": now}
                run_id = conn.execute(r.insert().values(**why, **fresh)).inserted_primary_key[0]
        except sa.exc.IntegrityError:  # a concurrent enqueue of the same trigger won
            with self.engine.connect() as conn:
                return int(conn.execute(sa.select(r.c.id).where(r.c.trigger_key == trigger_key)).scalar_one()), False
        return int(run_id), True

    def get(self, run_id: int) -> RetrainRun | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(retrain_runs).where(retrain_runs.c.id == run_id)).first()
        return _run(row) if row else None

    def runs(self, *, unfinished: bool = False) -> list[RetrainRun]:
        query = sa.select(retrain_runs).order_by(retrain_runs.c.id)
        if unfinished:
            query = query.where(retrain_runs.c.state.not_in(TERMINAL))
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query)]

    def update(self, run_id: int, **values: Any) -> None:
        """Record a stage's result (columns of the run); a cancelled run is never written again."""
        r = retrain_runs
        with self.engine.begin() as conn:
            conn.execute(
                r.update()
                .where(r.c.id == run_id, r.c.state != RunState.CANCELLED)
                .values(updated_at=datetime.now(UTC), **values)
            )

    def merge_details(self, run_id: int, extra: dict[str, Any]) -> None:
        """Add keys to a run's details in one transaction (a cancelled run is left alone)."""
        r = retrain_runs
        with self.engine.begin() as conn:
            details = conn.execute(sa.select(r.c.details).where(r.c.id == run_id)).scalar()
            if details is None:
                return
            conn.execute(
                r.update().where(r.c.id == run_id, r.c.state != RunState.CANCELLED).values(details={**details, **extra})
            )

    def cancel(self, tx: Transaction, run_id: int, *, error: str, lease: str) -> bool:
        """Mark an unfinished run cancelled and drop its lease; False when it had already ended."""
        r = retrain_runs
        moved = tx.execute(
            r.update()
            .where(r.c.id == run_id, r.c.state.not_in(TERMINAL))
            .values(state=RunState.CANCELLED, error=error, updated_at=datetime.now(UTC))
        ).rowcount
        if moved:
            tx.execute(leases.delete().where(leases.c.name == lease))
        return bool(moved)

    def state(self, run_id: int) -> RunState | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(retrain_runs.c.state).where(retrain_runs.c.id == run_id)).scalar()
        return RunState(value) if value is not None else None
