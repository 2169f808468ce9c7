"""Durable retraining runs: queued -> curating -> training -> evaluating [-> shadowing] -> registered | failed, or
cancelled by a person (`tuneloop retrain cancel ID`) at any stage before it ends.

Each run is a row in `retrain_runs`, unique per trigger (one per alert incident, one per cron fire),
so enqueuing twice creates nothing. A worker process (`python -m tuneloop.pipelines.loop.worker ID`, started by the
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
from pathlib import Path
from typing import Any

from tuneloop.errors import Conflict, NotFound
from tuneloop.pipelines.loop.spec import LoopSpec, load_loop
from tuneloop.registry.client import RegistryClient
from tuneloop.store.alerts import AlertStatus
from tuneloop.store.loops import TERMINAL, RunState

MAX_ATTEMPTS = 2


# --- loops --------------------------------------------------------------------------------------
def add_loop(rc: RegistryClient, path: Path, *, replace: bool = False) -> dict[str, Any]:
    spec = load_loop(path)
    rc.registered_model(spec.model)
    if not rc.stores.loops.save_loop(spec.name, spec.model, spec.model_dump(mode="json"), replace=replace):
        raise Conflict(f"loop `{spec.name}` exists", hint="pass --replace to update it")
    return {
        "loop": spec.name,
        "model": spec.model,
        "monitors": [m.model_dump() for m in spec.monitors],
        "on_alerts": spec.on_alerts,
        "cron": spec.cron,
        "promotion": spec.promotion,
    }


def loops(rc: RegistryClient) -> list[LoopSpec]:
    return [LoopSpec.model_validate(row.spec) for row in rc.stores.loops.loops()]


def loop(rc: RegistryClient, name: str) -> LoopSpec:
    for spec in loops(rc):
        if spec.name == name:
            return spec
    raise NotFound(f"no loop `{name}`", hint="add one with `tuneloop loop add FILE`; `tuneloop loop list` shows them")


# --- the queue ----------------------------------------------------------------------------------
def enqueue(
    rc: RegistryClient, loop_name: str, trigger: str, trigger_key: str | None = None, alert_id: int | None = None
) -> tuple[int, bool]:
    """(run id, created): a trigger that already has a run gets that run back."""
    spec = loop(rc, loop_name)
    key = trigger_key or f"{trigger}:{uuid.uuid4().hex}"
    return rc.stores.loops.enqueue(
        loop=spec.name, model=spec.model, trigger=trigger, trigger_key=key, alert_id=alert_id
    )


def enqueue_for_alerts(rc: RegistryClient) -> list[int]:
    """A retrain for every open alert whose rule a loop subscribes to (idempotent: keyed by alert id).

    Called right after each check, so an incident is seen while it is open; resolved history does not
    start retrains when a loop is added later."""
    created: list[int] = []
    subscribed = {rule: spec.name for spec in loops(rc) for rule in spec.on_alerts}
    if not subscribed:
        return created
    for alert in rc.stores.alerts.all(status=AlertStatus.OPEN, rules=list(subscribed)):
        run_id, new = enqueue(rc, subscribed[alert.rule], "alert", f"alert:{alert.id}", alert_id=alert.id)
        if new:
            created.append(run_id)
    return created


def runnable(rc: RegistryClient) -> list[int]:
    """Runs that need a worker: not finished, and nobody holds their lease."""
    ids = [run.id for run in rc.stores.loops.runs(unfinished=True)]
    return [i for i in ids if not ((h := rc.stores.leases.holder(lease_name(i))) and h.live)]


def lease_name(run_id: int) -> str:
    return f"retrain:{run_id}"


def get(rc: RegistryClient, run_id: int) -> dict[str, Any]:
    run = rc.stores.loops.get(run_id)
    if run is None:
        raise NotFound(f"no retraining run {run_id}", hint="`tuneloop retrain list` shows them")
    return run.as_dict()


def list_runs(rc: RegistryClient) -> list[dict[str, Any]]:
    return [run.as_dict() for run in rc.stores.loops.runs()]


def update(rc: RegistryClient, run_id: int, **values: Any) -> None:
    """Record a stage's result; a cancelled run is never written again (its worker may not know yet)."""
    if "details" in values:
        values["details"] = json.loads(json.dumps(values["details"], default=str))
    rc.stores.loops.update(run_id, **values)


def report_progress(rc: RegistryClient, run_id: int, text: str) -> None:
    """What the running stage is doing now (e.g. `evaluating challenger: answers 40/120`), for `follow`."""
    rc.stores.loops.merge_details(run_id, {"progress": text})


def cancel(rc: RegistryClient, run_id: int, reason: str) -> dict[str, Any]:
    """End a run for good: state `cancelled` with who and why, its lease released, a notification queued.
    Its worker notices within a second and stops; nothing resumes it."""
    from tuneloop.monitors.alerting import notify

    row = get(rc, run_id)
    if row["state"] in TERMINAL:
        raise Conflict(
            f"retraining run {run_id} already ended: it is `{row['state']}`",
            hint="only a queued or running retrain can be cancelled; `tuneloop retrain list` shows them",
        )
    actor = rc.settings.actor_name
    why = f"cancelled by {actor}" + (f": {reason}" if reason else "")
    with rc.stores.transaction() as tx:
        if not rc.stores.loops.cancel(tx, run_id, error=why, lease=lease_name(run_id)):
            raise Conflict(
                f"retraining run {run_id} ended while it was being cancelled", hint="see `tuneloop retrain show`"
            )
        notify.enqueue(
            rc.stores,
            tx,
            "retrain.cancelled",
            {
                "retrain_id": run_id,
                "loop": row["loop"],
                "model": row["model"],
                "stage": row["state"],
                "actor": actor,
                "reason": reason,
                "message": f"retrain {run_id} of {row['model']} {why} (it was {row['state']})",
            },
            webhooks_of(rc, row),
            alert_id=row["alert_id"],
        )
    if row["training_run_id"]:
        try:
            rc.mlflow.set_terminated(row["training_run_id"], "KILLED")
        except Exception:  # the run's record in MLflow is a mirror: the cancellation itself is stored  # noqa: BLE001, S110
            pass
    return get(rc, run_id)


def webhooks_of(rc: RegistryClient, row: dict[str, Any]) -> list[str]:
    """The webhooks of the alert rule whose incident started the run (none for cron and manual runs)."""
    if row["alert_id"] is None:
        return []
    from tuneloop.monitors.alerting.alerts import get as get_alert
    from tuneloop.monitors.alerting.alerts import rules_of

    rule = get_alert(rc, int(row["alert_id"]))["rule"]
    return next((r.webhooks for r in rules_of(rc) if r.name == rule), [])


def is_cancelled(rc: RegistryClient, run_id: int) -> bool:
    return rc.stores.loops.state(run_id) == RunState.CANCELLED
