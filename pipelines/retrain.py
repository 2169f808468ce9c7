"""Durable retraining runs: queued -> curating -> training -> evaluating -> registered | failed, or
cancelled by a person (`tuneloop retrain cancel ID`) at any stage before it ends.

Each run is a row in `retrain_runs`, unique per trigger (one per alert incident, one per cron fire),
so enqueuing twice creates nothing. A worker process (`tuneloop retrain worker ID`, started by the
scheduler or by `tuneloop retrain`) claims the run's lease, renews it while it works, and records
each stage before starting the next. A worker that dies — or whose parent (the scheduler) dies — lets
the lease lapse; the next claim resumes from the recorded stage: curated files are reused, training
continues from its last checkpoint, a version already registered by the training run is found by its
`tuneloop.training_run_id` tag instead of being registered again. A run is claimed at most
`MAX_ATTEMPTS` times: the original and one retry.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from tuneloop.pipelines.loop_spec import LoopSpec, load_loop
from tuneloop.registry.client import RegistryClient

from tuneloop.errors import Conflict, NotFound
from tuneloop.store import leases, tables
from tuneloop.store.engine import save_declared

STATES = ("queued", "curating", "training", "evaluating", "registered", "failed", "cancelled")
TERMINAL = ("registered", "failed", "cancelled")
MAX_ATTEMPTS = 2


# --- loops --------------------------------------------------------------------------------------
def add_loop(rc: RegistryClient, path: Path, *, replace: bool = False) -> dict[str, Any]:
    spec = load_loop(path)
    rc.registered_model(spec.model)
    save_declared(rc.engine, tables.loops, spec.name, {"model": spec.model, "spec": spec.model_dump_json()},
                  replace=replace, kind="loop")
    return {"loop": spec.name, "model": spec.model, "monitors": [m.model_dump() for m in spec.monitors],
            "on_alerts": spec.on_alerts, "cron": spec.cron, "promotion": spec.promotion}


def loops(rc: RegistryClient) -> list[LoopSpec]:
    with rc.engine.connect() as conn:
        return [LoopSpec.model_validate_json(s) for (s,) in conn.execute(sa.select(tables.loops.c.spec).order_by(tables.loops.c.name))]


def loop(rc: RegistryClient, name: str) -> LoopSpec:
    for spec in loops(rc):
        if spec.name == name:
            return spec
    raise NotFound(f"no loop `{name}`", hint="add one with `tuneloop loop add FILE`; `tuneloop loop list` shows them")


# --- the queue ----------------------------------------------------------------------------------
def enqueue(rc: RegistryClient, loop_name: str, trigger: str, trigger_key: str | None = None,
            alert_id: int | None = None) -> tuple[int, bool]:
    """(run id, created): a trigger that already has a run gets that run back."""
    spec = loop(rc, loop_name)
    key = trigger_key or f"{trigger}:{uuid.uuid4().hex}"
    r = tables.retrain_runs
    now = datetime.now(UTC)
    try:
        with rc.engine.begin() as conn:
            found = conn.execute(sa.select(r.c.id).where(r.c.trigger_key == key)).first()
            if found is not None:
                return int(found.id), False
            run_id = conn.execute(r.insert().values(
                loop=spec.name, model=spec.model, trigger=trigger, trigger_key=key, alert_id=alert_id, state="queued",
                attempts=0, details="{}", created_at=now, updated_at=now)).inserted_primary_key[0]
    except sa.exc.IntegrityError:  # a concurrent enqueue of the same trigger won
        with rc.engine.connect() as conn:
            return int(conn.execute(sa.select(r.c.id).where(r.c.trigger_key == key)).scalar_one()), False
    return int(run_id), True


def enqueue_for_alerts(rc: RegistryClient) -> list[int]:
    """A retrain for every open alert whose rule a loop subscribes to (idempotent: keyed by alert id).

    Called right after each check, so an incident is seen while it is open; resolved history does not
    start retrains when a loop is added later."""
    created = []
    subscribed = {rule: spec.name for spec in loops(rc) for rule in spec.on_alerts}
    if not subscribed:
        return created
    a = tables.alerts
    with rc.engine.connect() as conn:
        rows = conn.execute(sa.select(a.c.id, a.c.rule).where(a.c.rule.in_(list(subscribed)), a.c.status == "open")).all()
    for row in rows:
        run_id, new = enqueue(rc, subscribed[row.rule], "alert", f"alert:{row.id}", alert_id=int(row.id))
        if new:
            created.append(run_id)
    return created


def runnable(rc: RegistryClient) -> list[int]:
    """Runs that need a worker: not finished, and nobody holds their lease."""
    r = tables.retrain_runs
    with rc.engine.connect() as conn:
        ids = [int(i) for (i,) in conn.execute(sa.select(r.c.id).where(r.c.state.not_in(TERMINAL)).order_by(r.c.id))]
    return [i for i in ids if not ((h := leases.holder(rc.engine, lease_name(i))) and h["live"])]


def lease_name(run_id: int) -> str:
    return f"retrain:{run_id}"


def get(rc: RegistryClient, run_id: int) -> dict[str, Any]:
    with rc.engine.connect() as conn:
        row = conn.execute(sa.select(tables.retrain_runs).where(tables.retrain_runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no retraining run {run_id}", hint="`tuneloop retrain list` shows them")
    out = dict(row)
    out["details"] = json.loads(out["details"])
    for key in ("created_at", "updated_at"):
        out[key] = out[key].isoformat()
    return out


def list_runs(rc: RegistryClient) -> list[dict[str, Any]]:
    with rc.engine.connect() as conn:
        ids = [int(i) for (i,) in conn.execute(sa.select(tables.retrain_runs.c.id).order_by(tables.retrain_runs.c.id))]
    return [get(rc, i) for i in ids]


def update(rc: RegistryClient, run_id: int, **values: Any) -> None:
    """Record a stage's result; a cancelled run is never written again (its worker may not know yet)."""
    if "details" in values:
        values["details"] = json.dumps(values["details"], default=str)
    r = tables.retrain_runs
    with rc.engine.begin() as conn:
        conn.execute(r.update().where(r.c.id == run_id, r.c.state != "cancelled").values(updated_at=datetime.now(UTC), **values))


def report_progress(rc: RegistryClient, run_id: int, text: str) -> None:
    """What the running stage is doing now (e.g. `evaluating challenger: answers 40/120`), for `follow`."""
    r = tables.retrain_runs
    with rc.engine.begin() as conn:
        details = conn.execute(sa.select(r.c.details).where(r.c.id == run_id)).scalar()
        if details is None:
            return
        merged = {**json.loads(details), "progress": text}
        conn.execute(r.update().where(r.c.id == run_id, r.c.state != "cancelled").values(details=json.dumps(merged, default=str)))


def cancel(rc: RegistryClient, run_id: int, reason: str) -> dict[str, Any]:
    """End a run for good: state `cancelled` with who and why, its lease released, a notification queued.
    Its worker notices within a second and stops; nothing resumes it."""
    from tuneloop.monitors import notify

    row = get(rc, run_id)
    if row["state"] in TERMINAL:
        raise Conflict(f"retraining run {run_id} already ended: it is `{row['state']}`",
                       hint="only a queued or running retrain can be cancelled; `tuneloop retrain list` shows them")
    actor = rc.settings.actor_name
    why = f"cancelled by {actor}" + (f": {reason}" if reason else "")
    r = tables.retrain_runs
    with rc.engine.begin() as conn:
        moved = conn.execute(r.update().where(r.c.id == run_id, r.c.state.not_in(TERMINAL))
                             .values(state="cancelled", error=why, updated_at=datetime.now(UTC))).rowcount
        if not moved:
            raise Conflict(f"retraining run {run_id} ended while it was being cancelled", hint="see `tuneloop retrain show`")
        conn.execute(tables.leases.delete().where(tables.leases.c.name == lease_name(run_id)))
        notify.enqueue(conn, "retrain.cancelled", {
            "retrain_id": run_id, "loop": row["loop"], "model": row["model"], "stage": row["state"], "actor": actor,
            "reason": reason, "message": f"retrain {run_id} of {row['model']} {why} (it was {row['state']})"},
            webhooks_of(rc, row), alert_id=row["alert_id"])
    if row["training_run_id"]:
        try:
            rc.mlflow.set_terminated(row["training_run_id"], "KILLED")
        except Exception:  # the run's record in MLflow is a mirror: the cancellation itself is stored
            pass
    return get(rc, run_id)


def webhooks_of(rc: RegistryClient, row: dict[str, Any]) -> list[str]:
    """The webhooks of the alert rule whose incident started the run (none for cron and manual runs)."""
    if row["alert_id"] is None:
        return []
    from tuneloop.monitors.alerts import get as get_alert
    from tuneloop.monitors.alerts import rules_of

    rule = get_alert(rc, int(row["alert_id"]))["rule"]
    return next((r.webhooks for r in rules_of(rc) if r.name == rule), [])


def is_cancelled(rc: RegistryClient, run_id: int) -> bool:
    with rc.engine.connect() as conn:
        return conn.execute(sa.select(tables.retrain_runs.c.state).where(tables.retrain_runs.c.id == run_id)).scalar() == "cancelled"
