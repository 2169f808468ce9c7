"""Named leases in tuneloop's database: who is the active scheduler, who owns a retraining run.

A lease is held until `expires_at`; its owner renews it well before then. Anyone may take a lease that
has lapsed, so a crashed owner (kill -9, a lost node) is replaced after at most one lease period.
Taking and renewing happen under the database's write lock (`tuneloop.store.locks.locked`), so two candidates
can never both believe they hold it.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tuneloop.store import tables
from tuneloop.store.locks import locked


def owner_id() -> str:
    """host:pid — unique among live processes, and readable in `tuneloop scheduler status`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(engine: Engine, name: str, owner: str, seconds: float) -> bool:
    """Take or renew lease `name` for `seconds`; False while another owner holds it."""
    now = datetime.now(UTC)
    lease = tables.leases
    with locked(engine, f"lease:{name}") as conn:
        row = conn.execute(sa.select(lease).where(lease.c.name == name)).mappings().first()
        expires = now + timedelta(seconds=seconds)
        if row is None:
            conn.execute(lease.insert().values(name=name, owner=owner, expires_at=expires, acquired_at=now))
            return True
        if row["owner"] != owner and _aware(row["expires_at"]) > now:
            return False
        values = {"owner": owner, "expires_at": expires}
        if row["owner"] != owner:
            values["acquired_at"] = now
        conn.execute(lease.update().where(lease.c.name == name).values(**values))
        return True


def release(engine: Engine, name: str, owner: str) -> None:
    with locked(engine, f"lease:{name}") as conn:
        conn.execute(tables.leases.delete().where(tables.leases.c.name == name, tables.leases.c.owner == owner))


def holder(engine: Engine, name: str) -> dict | None:
    """{owner, expires_at, acquired_at, live} of lease `name`, or None if nobody ever took it."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(tables.leases).where(tables.leases.c.name == name)).mappings().first()
    if row is None:
        return None
    expires = _aware(row["expires_at"])
    return {"owner": row["owner"], "expires_at": expires.isoformat(), "acquired_at": _aware(row["acquired_at"]).isoformat(),
            "live": expires > datetime.now(UTC)}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite returns naive datetimes
