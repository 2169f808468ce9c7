"""Durable retraining runs: queued -> curating -> training -> evaluating -> registered | failed.

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
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipelines.loop_spec import LoopSpec, load_loop
from registry import leases, tables
from registry.client import RegistryClient
from registry.db import save_declared
from tuneloop.errors import Conflict, NotFound, TuneloopError

STATES = ("queued", "curating", "training", "evaluating", "registered", "failed")
TERMINAL = ("registered", "failed")
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
    if "details" in values:
        values["details"] = json.dumps(values["details"], default=str)
    with rc.engine.begin() as conn:
        conn.execute(tables.retrain_runs.update().where(tables.retrain_runs.c.id == run_id)
                     .values(updated_at=datetime.now(UTC), **values))


# --- workers ------------------------------------------------------------------------------------
def spawn_worker(config_file: str | None, run_id: int) -> subprocess.Popen:  # type: ignore[type-arg]
    """Start `tuneloop retrain worker RUN_ID` as a child process (training runs there, not in the scheduler)."""
    command = [sys.executable, "-m", "tuneloop", *(["--config", config_file] if config_file else []),
               "retrain", "worker", str(run_id)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


def follow(rc: RegistryClient, config_file: str | None, run_id: int, on_state: Callable[[str], None],
           timeout_s: float = 24 * 3600) -> dict[str, Any]:
    """Run retrain `run_id` in a worker subprocess here and report each new state until it ends. A worker
    that dies is started once more (the run's own claim limit decides whether it resumes)."""
    import time

    worker = spawn_worker(config_file, run_id)
    state, deadline = None, time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            row = get(rc, run_id)
            if row["state"] != state:
                state = row["state"]
                on_state(state)
            if state in TERMINAL:
                break
            if worker.poll() is not None and get(rc, run_id)["state"] not in TERMINAL:
                worker = spawn_worker(config_file, run_id)
            time.sleep(1)
    finally:
        if worker.poll() is None:
            worker.wait()
    return get(rc, run_id)


class _Heartbeat(threading.Thread):
    """Renews the run's lease; exits the process at once if the lease is lost or the parent died."""

    def __init__(self, rc: RegistryClient, name: str, owner: str, lease_s: float) -> None:
        super().__init__(daemon=True)
        self.rc, self.name, self.owner, self.lease_s = rc, name, owner, lease_s
        self.parent = os.getppid()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(min(1.0, self.lease_s / 3)):
            if os.getppid() != self.parent:
                os._exit(75)  # the scheduler that started us died: our lease lapses and the next owner resumes
            try:
                if not leases.acquire(self.rc.engine, self.name, self.owner, self.lease_s):
                    os._exit(75)
            except Exception:
                continue  # a database hiccup: try again before the lease runs out


def run_worker(rc: RegistryClient, run_id: int, *, lease_s: float | None = None) -> dict[str, Any]:
    """Claim run `run_id` and drive it to a terminal state; the final row."""
    from pipelines import challenger

    lease_s = lease_s or rc.settings.scheduler.lease_seconds
    row = get(rc, run_id)
    if row["state"] in TERMINAL:
        return row
    owner = leases.owner_id()
    if not leases.acquire(rc.engine, lease_name(run_id), owner, lease_s):
        raise Conflict(f"retraining run {run_id} is owned by a live worker", hint="wait for it; `tuneloop retrain list`")
    attempts = row["attempts"] + 1
    if attempts > MAX_ATTEMPTS:
        update(rc, run_id, state="failed", attempts=attempts,
               error=f"its worker died {row['attempts']} times (last in state `{row['state']}`); not retried again")
        leases.release(rc.engine, lease_name(run_id), owner)
        return get(rc, run_id)
    update(rc, run_id, attempts=attempts)
    heartbeat = _Heartbeat(rc, lease_name(run_id), owner, lease_s)
    heartbeat.start()
    try:
        challenger.drive(rc, run_id)
    except TuneloopError as exc:
        update(rc, run_id, state="failed", error=f"{exc.message}" + (f" (fix: {exc.hint})" if exc.hint else ""))
    except Exception as exc:  # a bug or a library failure: recorded, not retried blindly
        update(rc, run_id, state="failed", error=rc.settings.scrub(f"{type(exc).__name__}: {exc}"))
    finally:
        heartbeat.stopped.set()
        leases.release(rc.engine, lease_name(run_id), owner)
    return get(rc, run_id)
