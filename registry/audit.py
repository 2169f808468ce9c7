"""The append-only audit trail of alias moves, and its mirror in MLflow.

Entries form one hash chain per model: each stores the hash of the model's previous entry, so an
entry edited or removed behind the database triggers' back shows up in `verify_chain`.
Moves made outside tuneloop (MLflow UI or API) are found by `reconcile` and recorded as
`unaudited`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneloop.names import Experiment, RunTag, Tag
from tuneloop.schemas import AliasMove, GateCheck, MoveKind
from tuneloop.store import Stores, Transaction
from tuneloop.store.audit import AuditEntry

if TYPE_CHECKING:
    from tuneloop.registry.client import RegistryClient


def _to_move(entry: AuditEntry) -> AliasMove:
    return AliasMove(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        model=entry.model,
        alias=entry.alias,
        kind=entry.kind,
        from_version=entry.from_version,
        to_version=entry.to_version,
        forced=entry.forced,
        reason=entry.reason,
        gates=[GateCheck(**g) for g in entry.gates],
    )


def append(
    stores: Stores,
    tx: Transaction,
    *,
    actor: str,
    model: str,
    alias: str,
    kind: MoveKind,
    from_version: int | None,
    to_version: int | None,
    forced: bool = False,
    reason: str = "",
    gates: list[GateCheck] | None = None,
) -> AliasMove:
    """Append one entry; call inside `stores.transaction(lock=lock_name(model))`."""
    return _to_move(
        stores.audit.append(
            tx,
            actor=actor,
            model=model,
            alias=alias,
            kind=kind,
            from_version=from_version,
            to_version=to_version,
            forced=forced,
            reason=reason,
            gates=[g.model_dump() for g in gates or []],
        )
    )


def entries(stores: Stores, tx: Transaction, model: str, alias: str | None = None) -> list[AliasMove]:
    return [_to_move(e) for e in stores.audit.entries(tx, model, alias)]


def last_holders(stores: Stores, tx: Transaction, model: str) -> dict[str, int | None]:
    """Alias -> version as the audit trail last left it."""
    return stores.audit.last_holders(tx, model)


def verify_chain(stores: Stores, tx: Transaction, model: str) -> list[int]:
    """Ids of entries whose hash or link does not match: empty when the trail is intact."""
    return stores.audit.verify_chain(tx, model)


def reconcile(rc: RegistryClient, tx: Transaction, model: str) -> list[AliasMove]:
    """Record alias moves made outside tuneloop since the last registry operation."""
    actual = {alias: int(v) for alias, v in rc.registered_model(model).aliases.items()}
    known = last_holders(rc.stores, tx, model)
    recorded = []
    for alias in sorted(set(actual) | {a for a, v in known.items() if v is not None}):
        if actual.get(alias) != known.get(alias):
            recorded.append(
                append(
                    rc.stores,
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
    for entry in pending:
        move = _to_move(entry)
        arrow = f"v{move.from_version or '-'} → v{move.to_version or '-'}"
        run = client.create_run(
            exp,
            run_name=f"{move.model}@{move.alias}: {arrow}",
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
