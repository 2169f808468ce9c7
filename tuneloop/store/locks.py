"""Named locks in tuneloop's database.

On SQLite every transaction starts with `BEGIN IMMEDIATE` (see `tuneloop.store.engine`), so any
transaction holds the one write lock; on PostgreSQL `locked()` takes a transaction-scoped advisory lock
keyed by the name.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


def lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - (1 << 31)  # fits a signed 32-bit advisory key


@contextmanager
def locked(engine: Engine, name: str) -> Iterator[Connection]:
    """A transaction that holds the named lock until it commits or rolls back."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key(name))))
        yield conn
