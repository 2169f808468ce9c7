"""tuneloop's own database: one engine per URL and process, migrated (or checked) on first use.

SQLite (WAL mode) by default, PostgreSQL in production. Every transaction on SQLite starts with
`BEGIN IMMEDIATE`, so it holds the database's write lock from its first statement: that makes
`tuneloop.store.locks.locked()` a real mutual exclusion across processes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tuneloop.errors import StoreError
from tuneloop.store import schema

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_guard = threading.Lock()


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 120, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives a power cut, not only a crash
        cur.execute("PRAGMA busy_timeout=120000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def get_engine(database_url: str, *, migrate_on_start: bool = True) -> Engine:
    """One engine per URL and process, migrated to the latest schema on first use (or, with
    `migrate_on_start` false, checked to be at it: see tuneloop.store.schema)."""
    with _guard:
        engine = _engines.get(database_url)
        if engine is None:
            try:
                url = sa.make_url(database_url)
            except sa.exc.ArgumentError:
                raise StoreError(
                    "`stores.database_url` is not a database URL",
                    hint="use sqlite:///path/tuneloop.db or postgresql://user@host/db",
                ) from None
            if url.get_backend_name() == "sqlite":
                engine = _sqlite_engine(url)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
            _engines[database_url] = engine
        if database_url not in _migrated:
            if migrate_on_start:
                schema.migrate(engine)
            else:
                schema.require_current(schema.tuneloop_status(database_url))
            _migrated.add(database_url)
        return engine


def dispose_engines() -> None:
    with _guard:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()
