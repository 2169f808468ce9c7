"""tuneloop's tables: created on first use by Alembic, safely when processes start at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import REPO

_FIRST_USE = """
import sys
from tuneloop.store.engine import get_engine
import sqlalchemy as sa
engine = get_engine(sys.argv[1])
with engine.connect() as conn:
    print(conn.execute(sa.text("SELECT version_num FROM tuneloop_alembic_version")).scalar())
"""


def _first_use_in_parallel(url: str, processes: int = 4) -> None:
    """Open the database from several processes at once; each must see it migrated to head."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_USE, url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    assert {r[0].strip() for r in results} == {_head()}


def _head() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory(str(REPO / "tuneloop" / "store" / "migrations")).get_current_head())


def test_concurrent_first_use_migrates_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuneloop.db'}"
    _first_use_in_parallel(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        tables = {r[0] for r in conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type='table'"))}
    assert {
        "audit_log",
        "audit_mirror",
        "records",
        "feedback",
        "ingest_tokens",
        "ingest_requests",
        "tuneloop_alembic_version",
    } <= tables
    assert (
        _head() == "0010"
        and {
            "monitors",
            "monitor_windows",
            "monitor_cursors",
            "alert_rules",
            "alert_rule_states",
            "alerts",
            "notifications",
            "delivery_attempts",
            "leases",
            "loops",
            "retrain_runs",
            "traffic_policies",
            "record_traces",
            "trace_assessments",
        }
        <= tables
    )


def test_concurrent_first_use_on_postgres(tmp_path: Path) -> None:
    import uuid

    import pytest

    from tests.conftest import PG_ADMIN_URL, _pg, _postgres_available

    if not _postgres_available():
        pytest.skip("PostgreSQL is not reachable")
    name = f"t_migrate_{uuid.uuid4().hex[:8]}"
    _pg(PG_ADMIN_URL, f"CREATE DATABASE {name}")
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        _first_use_in_parallel(url)
    finally:
        _pg(PG_ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _json_as_text_on_sqlite(context, inspected_column, metadata_column, inspected_type, metadata_type):
    """SQLite keeps JSON in text columns (older migrations made them TEXT): the same column there."""
    from tuneloop.store.types import JSONDocument

    if context.dialect.name == "sqlite" and isinstance(metadata_type, JSONDocument):
        return not isinstance(inspected_type, sa.Text | sa.JSON)
    return None  # Alembic's own comparison


def test_tables_match_the_migrations(stores, tmp_path: Path) -> None:
    """`tables.py` declares what the migrations build: Alembic finds nothing to add, drop or alter."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tuneloop.settings import Settings
    from tuneloop.store.engine import get_engine
    from tuneloop.store.tables import metadata

    engine = get_engine(Settings(**stores.settings_kwargs(tmp_path / "home")).database_url)
    options = {"compare_type": _json_as_text_on_sqlite, "version_table": "tuneloop_alembic_version"}
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts=options), metadata)
    assert diffs == []
