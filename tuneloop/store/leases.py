"""Named leases in tuneloop's database: who is the active scheduler, who owns a retraining run.

A lease is held until `expires_at`; its owner renews it well before then. Anyone may take a lease that
has lapsed, so a crashed owner (kill -9, a lost node) is replaced after at most one lease period.
Taking and renewing happen under the database's write lock (`tuneloop.store.locks.locked`), so two candidates
can never both believe they hold it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store
from tuneloop.store.locks import locked
from tuneloop.store.tables import leases


def owner_id() -> str:
    """host:pid — unique among live processes, and readable in `tuneloop scheduler status`."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Lease:
    name: str
    owner: str
    expires_at: datetime
    acquired_at: datetime

    @property
    def live(self) -> bool:
        return self.expires_at > datetime.now(UTC)

    def as_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "expires_at": self.expires_at.isoformat(),
            "acquired_at": self.acquired_at.isoformat(),
            "live": self.live,
        }


class LeaseStore(Store):
    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        """Take or renew lease `name` for `seconds`; False while another owner holds it."""
        now = datetime.now(UTC)
        with locked(self.engine, f"lease:{name}") as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).first()
            expires = now + timedelta(seconds=seconds)
            if row is None:
                conn.execute(leases.insert().values(name=name, owner=owner, expires_at=expires, acquired_at=now))
                return True
            if row.owner != owner and row.expires_at > now:
                return False
            values: dict[str, Any] = {"owner": owner, "expires_at": expires}
            if row.owner != owner:
                values["acquired_at"] = now
            conn.execute(leases.update().where(leases.c.name == name).values(**values))
            return True

    def release(self, name: str, owner: str) -> None:
        """Give lease `name` up, if `owner` still holds it."""
        with locked(self.engine, f"lease:{name}") as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.owner == owner))

    def holder(self, name: str) -> Lease | None:
        """Who holds (or last held) lease `name`; None if nobody ever took it, or it was released."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).first()
        return Lease(row.name, row.owner, row.expires_at, row.acquired_at) if row else None
