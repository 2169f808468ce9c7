"""Traffic policies, one per served model: read by every server each `serve.reload_seconds`, written
with an audit entry in the same transaction (`tuneloop.registry.traffic`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from tuneloop.store.base import Store, Transaction
from tuneloop.store.tables import traffic_policies
from tuneloop.traffic import OFF, TrafficPolicy


@dataclass(frozen=True)
class StoredPolicy:
    model: str
    policy: TrafficPolicy
    set_by: str | None  # None: never set
    set_at: datetime | None


class TrafficStore(Store):
    def get(self, model: str, tx: Transaction | None = None) -> StoredPolicy:
        """`model`'s policy; inside `tx` when given (a writer reads what it replaces under its lock)."""
        query = sa.select(traffic_policies).where(traffic_policies.c.model == model)
        if tx is not None:
            row = tx.execute(query).first()
        else:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        if row is None:
            return StoredPolicy(model, OFF, None, None)
        return StoredPolicy(model, TrafficPolicy.model_validate(row.policy), row.set_by, row.set_at)

    def put(self, tx: Transaction, model: str, policy: TrafficPolicy, actor: str) -> None:
        values = {
            "policy": policy.model_dump(mode="json", exclude_none=True),
            "set_by": actor,
            "set_at": datetime.now(UTC),
        }
        updated = tx.execute(traffic_policies.update().where(traffic_policies.c.model == model).values(**values))
        if not updated.rowcount:
            tx.execute(traffic_policies.insert().values(model=model, **values))
