"""The append-only audit trail of alias moves, and its mirror in MLflow.

Entries form one hash chain per model: each stores the hash of the model's previous entry, so an
entry edited or removed behind the database triggers' back shows up in `verify_chain`.
Moves made outside tuneloop (MLflow UI or API) are found by `reconcile` and recorded as
`unaudited`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneloop.names import Experiment, RunTag, Tag
from tuneloop.schemas import AliasMove
from tuneloop.store import Transaction

if TYPE_CHECKING:
    from tuneloop.registry.client import RegistryClient


def reconcile(rc: RegistryClient, tx: Transaction, model: str) -> list[AliasMove]:
    """Record alias moves made outside tuneloop since the last registry operation."""
    actual = {alias: int(v) for alias, v in rc.registered_model(model).aliases.items()}
    known = rc.stores.audit.last_holders(tx, model)
    recorded = []
    for alias in sorted(set(actual) | {a for a, v in known.items() if v is not None}):
        if actual.get(alias) != known.get(alias):
            recorded.append(
                rc.stores.audit.append(
                    tx,
                    actor="unknown (outside tuneloop)",
                    model=model,
                    alias=alias,
                    kind="unaudited",
                    from_version=known.get(alias),
                    to_version=actual.get(alias),
                    reason="alias moved outside tuneloop (MLflow UI or API); detected on the next registry operation",
                )
            )
    return recorded


def mirror_pending(rc: RegistryClient, tx: Transaction, model: str) -> None:
    """Copy audit entries not yet in MLflow into runs of the audit experiment (one run each)."""
    from tuneloop.registry.tracking import experiment_id

    pending = rc.stores.audit.unmirrored(tx, model)
    if not pending:
        return
    client = rc.mlflow
    exp = experiment_id(client, rc.settings, Experiment.AUDIT)
    for move in pending:
        arrow = f"v{move.from_version or '-'} → v{move.to_version or '-'}"
        title = f"{move.model}: traffic policy" if move.kind == "traffic" else f"{move.model}@{move.alias}: {arrow}"
        run = client.create_run(
            exp,
            run_name=title,
            tags={
                Tag.AUDIT_ENTRY: str(move.id),
                RunTag.AUDIT_PREFIX + "model": move.model,
                RunTag.AUDIT_PREFIX + "alias": move.alias,
                RunTag.AUDIT_PREFIX + "kind": move.kind,
                RunTag.AUDIT_PREFIX + "from_version": str(move.from_version or ""),
                RunTag.AUDIT_PREFIX + "to_version": str(move.to_version or ""),
                RunTag.AUDIT_PREFIX + "forced": str(move.forced).lower(),
                RunTag.AUDIT_PREFIX + "actor": move.actor,
                RunTag.AUDIT_PREFIX + "reason": move.reason[:5000],
                RunTag.AUDIT_PREFIX + "at": move.at.isoformat(),
            },
        )
        client.log_dict(run.info.run_id, move.model_dump(mode="json"), "audit_entry.json")
        client.set_terminated(run.info.run_id)
        rc.stores.audit.mark_mirrored(tx, move.id, run.info.run_id)
