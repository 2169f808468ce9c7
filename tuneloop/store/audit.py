"""The append-only audit log of alias moves, and which entries are mirrored into MLflow.

Database triggers refuse UPDATE and DELETE on `audit_log`. Entries form one hash chain per model: each
stores the hash of the model's previous entry, so an entry edited or removed behind the triggers' back
shows in `verify_chain`. The chain covers the exact stored text of `gates` (kept a text column for
that reason) and the entry's time as naive-UTC ISO text, as it always has: changing either changes
the hash of every entry already written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tuneloop.schemas import AliasMove, GateCheck, MoveKind
from tuneloop.store.base import Store, Transaction
from tuneloop.store.tables import audit_log, audit_mirror

GENESIS = "0" * 64
_HASHED = ("actor", "model", "alias", "kind", "from_version", "to_version", "forced", "reason", "gates")


def _entry_hash(prev_hash: str, row: dict[str, Any]) -> str:
    at = row["at"].astimezone(UTC).replace(tzinfo=None)
    fields = {"at": at.isoformat(), **{k: row[k] for k in _HASHED}}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _entry(columns: Mapping[str, Any]) -> AliasMove:
    return AliasMove.model_validate({**columns, "gates": json.loads(columns["gates"])})


class AuditStore(Store):
    def append(
        self,
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
        """Append one entry; call inside `Stores.transaction(lock=...)` holding the model's lock."""
        last = tx.execute(
            sa.select(audit_log.c.entry_hash).where(audit_log.c.model == model).order_by(audit_log.c.id.desc()).limit(1)
        ).scalar()
        row: dict[str, Any] = {
            "at": datetime.now(UTC),
            "actor": actor,
            "model": model,
            "alias": alias,
            "kind": kind,
            "from_version": from_version,
            "to_version": to_version,
            "forced": forced,
            "reason": reason,
            "gates": json.dumps([g.model_dump() for g in gates or []]),  # hashed as this exact text
        }
        row["prev_hash"] = last or GENESIS
        row["entry_hash"] = _entry_hash(row["prev_hash"], row)
        row["id"] = tx.execute(audit_log.insert().values(**row)).inserted_primary_key[0]
        return _entry(row)

    def entries(self, tx: Transaction, model: str, alias: str | None = None) -> list[AliasMove]:
        query = sa.select(audit_log).where(audit_log.c.model == model).order_by(audit_log.c.id)
        if alias is not None:
            query = query.where(audit_log.c.alias == alias)
        return [_entry(r._mapping) for r in tx.execute(query)]

    def last_holders(self, tx: Transaction, model: str) -> dict[str, int | None]:
        """Alias -> version as the audit log last left it."""
        holders: dict[str, int | None] = {}
        for r in tx.execute(
            sa.select(audit_log.c.alias, audit_log.c.to_version)
            .where(audit_log.c.model == model, audit_log.c.kind != "traffic")
            .order_by(audit_log.c.id)
        ):
            holders[r.alias] = r.to_version
        return holders

    def verify_chain(self, tx: Transaction, model: str) -> list[int]:
        """Ids of entries whose hash or link does not match: empty when the log is intact."""
        broken, prev = [], GENESIS
        for r in tx.execute(sa.select(audit_log).where(audit_log.c.model == model).order_by(audit_log.c.id)):
            row = dict(r._mapping)
            if row["prev_hash"] != prev or row["entry_hash"] != _entry_hash(prev, row):
                broken.append(int(row["id"]))
            prev = row["entry_hash"]
        return broken

    def unmirrored(self, tx: Transaction, model: str) -> list[AliasMove]:
        query = (
            sa.select(audit_log)
            .outerjoin(audit_mirror, audit_mirror.c.audit_id == audit_log.c.id)
            .where(audit_log.c.model == model, audit_mirror.c.run_id.is_(None))
            .order_by(audit_log.c.id)
        )
        return [_entry(r._mapping) for r in tx.execute(query)]

    def mark_mirrored(self, tx: Transaction, audit_id: int, run_id: str) -> None:
        tx.execute(audit_mirror.insert().values(audit_id=audit_id, run_id=run_id))
