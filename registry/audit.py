"""The append-only audit trail of alias moves, and its mirror in MLflow.

Entries form one hash chain per model: each stores the hash of the model's previous entry, so an
entry edited or removed behind the database triggers' back shows up in `verify_chain`.
Moves made outside tuneloop (MLflow UI or API) are found by `reconcile` and recorded as
`unaudited`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuneloop.names import Experiment, Tag
from tuneloop.schemas import AliasMove, GateCheck, MoveKind
from tuneloop.store.tables import audit_log, audit_mirror

if TYPE_CHECKING:
    from tuneloop.registry.client import RegistryClient

GENESIS = "0" * 64


def _entry_hash(prev_hash: str, fields: dict) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _hashed_fields(row: dict) -> dict:
    at = row["at"]
    if at.tzinfo is not None:  # PostgreSQL returns aware datetimes, SQLite naive UTC ones
        at = at.astimezone(UTC).replace(tzinfo=None)
    keys = ("actor", "model", "alias", "kind", "from_version", "to_version", "forced", "reason", "gates")
    return {"at": at.isoformat(), **{k: row[k] for k in keys}}


def _to_move(row: dict) -> AliasMove:
    at = row["at"] if row["at"].tzinfo else row["at"].replace(tzinfo=UTC)
    return AliasMove(
        id=row["id"],
        at=at,
        actor=row["actor"],
        model=row["model"],
        alias=row["alias"],
        kind=row["kind"],
        from_version=row["from_version"],
        to_version=row["to_version"],
        forced=bool(row["forced"]),
        reason=row["reason"],
        gates=[GateCheck(**g) for g in json.loads(row["gates"])],
    )


def append(
    conn: Connection,
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
    """Append one entry; call inside `tuneloop.store.locks.locked(engine, lock_name(model))`."""
    last = conn.execute(
        sa.select(audit_log.c.entry_hash).where(audit_log.c.model == model).order_by(audit_log.c.id.desc()).limit(1)
    ).scalar()
    row = {
        "at": datetime.now(UTC).replace(tzinfo=None),
        "actor": actor,
        "model": model,
        "alias": alias,
        "kind": kind,
        "from_version": from_version,
        "to_version": to_version,
        "forced": forced,
        "reason": reason,
        "gates": json.dumps([g.model_dump() for g in gates or []]),
    }
    row["prev_hash"] = last or GENESIS
    row["entry_hash"] = _entry_hash(row["prev_hash"], _hashed_fields(row))
    row["id"] = conn.execute(audit_log.insert().values(**row)).inserted_primary_key[0]
    return _to_move(row)


def entries(conn: Connection, model: str, alias: str | None = None) -> list[AliasMove]:
    query = sa.select(audit_log).where(audit_log.c.model == model).order_by(audit_log.c.id)
    if alias is not None:
        query = query.where(audit_log.c.alias == alias)
    return [_to_move(dict(r._mapping)) for r in conn.execute(query)]


def last_holders(conn: Connection, model: str) -> dict[str, int | None]:
    """Alias -> version as the audit trail last left it."""
    holders: dict[str, int | None] = {}
    for r in conn.execute(
        sa.select(audit_log.c.alias, audit_log.c.to_version).where(audit_log.c.model == model).order_by(audit_log.c.id)
    ):
        holders[r.alias] = r.to_version
    return holders


def verify_chain(conn: Connection, model: str) -> list[int]:
    """Ids of entries whose hash or link does not match: empty when the trail is intact."""
    broken, prev = [], GENESIS
    for r in conn.execute(sa.select(audit_log).where(audit_log.c.model == model).order_by(audit_log.c.id)):
        row = dict(r._mapping)
        if row["prev_hash"] != prev or row["entry_hash"] != _entry_hash(prev, _hashed_fields(row)):
            broken.append(row["id"])
        prev = row["entry_hash"]
    return broken


def reconcile(rc: RegistryClient, conn: Connection, model: str) -> list[AliasMove]:
    """Record alias moves made outside tuneloop since the last registry operation."""
    actual = {alias: int(v) for alias, v in rc.registered_model(model).aliases.items()}
    known = last_holders(conn, model)
    recorded = []
    for alias in sorted(set(actual) | {a for a, v in known.items() if v is not None}):
        if actual.get(alias) != known.get(alias):
            recorded.append(
                append(
                    conn,
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


def mirror_pending(rc: RegistryClient, conn: Connection, model: str) -> None:
    """Copy audit entries not yet in MLflow into runs of the audit experiment (one run each)."""
    from tuneloop.registry.tracking import experiment_id

    pending = conn.execute(
        sa.select(audit_log)
        .outerjoin(audit_mirror, audit_mirror.c.audit_id == audit_log.c.id)
        .where(audit_log.c.model == model, audit_mirror.c.run_id.is_(None))
        .order_by(audit_log.c.id)
    ).fetchall()
    if not pending:
        return
    client = rc.mlflow
    exp = experiment_id(client, rc.settings, Experiment.AUDIT)
    for r in pending:
        move = _to_move(dict(r._mapping))
        arrow = f"v{move.from_version or '-'} → v{move.to_version or '-'}"
        run = client.create_run(
            exp,
            run_name=f"{move.model}@{move.alias}: {arrow}",
            tags={
                Tag.AUDIT_ENTRY: str(move.id),
                "tuneloop.audit.model": move.model,
                "tuneloop.audit.alias": move.alias,
                "tuneloop.audit.kind": move.kind,
                "tuneloop.audit.from_version": str(move.from_version or ""),
                "tuneloop.audit.to_version": str(move.to_version or ""),
                "tuneloop.audit.forced": str(move.forced).lower(),
                "tuneloop.audit.actor": move.actor,
                "tuneloop.audit.reason": move.reason[:5000],
                "tuneloop.audit.at": move.at.isoformat(),
            },
        )
        client.log_dict(run.info.run_id, move.model_dump(mode="json"), "audit_entry.json")
        client.set_terminated(run.info.run_id)
        conn.execute(audit_mirror.insert().values(audit_id=move.id, run_id=run.info.run_id))
