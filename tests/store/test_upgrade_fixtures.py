"""Databases made by commit a3a2416 (tests/fixtures/a3a2416, written by make_fixtures.py there) are upgraded
by `tuneloop db upgrade` with every row kept, the audit log still append-only with its hash chain intact,
and what that code stored (recipes, pinned references) still read by today's code."""

from __future__ import annotations

import json
import pickle
import shutil
import sqlite3
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import BACKENDS, PG_ADMIN_URL, REPO, _pg, _postgres_available, run_cli

FIXTURES = REPO / "tests" / "fixtures" / "a3a2416"
ADAPTER = "tiny-support"


def _load(backend: str, home: Path) -> dict[str, str]:
    """Restore the fixture under `home`; the env that points the CLI at it."""
    source = FIXTURES / backend
    shutil.copytree(source / "artifacts", home / "artifacts")
    env = {"TUNELOOP_HOME": str(home), "TUNELOOP_CACHE_DIR": str(home.parent / "cache"), "HF_HUB_OFFLINE": "1"}
    dumps = {name: (source / f"{name}.sql").read_text().replace("@HOME@", str(home)) for name in ("mlflow", "tuneloop")}
    if backend == "sqlite":
        for name, text in dumps.items():
            with sqlite3.connect(home / f"{name}.db") as conn:
                conn.executescript(text)
        return env
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    urls = {}
    for name, text in dumps.items():
        database = f"fx_{uuid.uuid4().hex[:10]}_{name}"
        _pg(PG_ADMIN_URL, f"CREATE DATABASE {database}")
        urls[name] = f"{base}/{database}"
        script = "\n".join(line for line in text.splitlines() if not line.startswith("\\"))  # psql meta-commands
        _pg(urls[name], script)
    return env | {"TUNELOOP_STORES__MLFLOW_URI": urls["mlflow"], "TUNELOOP_STORES__DATABASE_URL": urls["tuneloop"]}


def _url(env: dict[str, str], name: str) -> str:
    key = {"mlflow": "TUNELOOP_STORES__MLFLOW_URI", "tuneloop": "TUNELOOP_STORES__DATABASE_URL"}[name]
    return env.get(key) or f"sqlite:///{env['TUNELOOP_HOME']}/{name}.db"


def _rows(url: str) -> dict[str, list[tuple]]:
    """Every table's primary keys (or whole rows where it has none), sorted."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        out = {}
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                columns = list(table.primary_key.columns) or list(table.columns)
                out[table.name] = sorted(tuple(map(str, r)) for r in conn.execute(sa.select(*columns)))
        return out
    finally:
        engine.dispose()


VERSION_TABLES = {"alembic_version", "tuneloop_alembic_version"}
JSON_COLUMNS = [
    ("records", "meta", "seq"),
    ("monitors", "spec", "name"),
    ("monitor_windows", "checks", "id"),
    ("monitor_windows", "drifted_checks", "id"),
    ("alert_rules", "spec", "name"),
    ("alerts", "summary", "id"),
    ("notifications", "payload", "id"),
    ("loops", "spec", "name"),
    ("retrain_runs", "details", "id"),
    ("ingest_requests", "response", "key"),
]


def _head() -> str:
    from alembic.script import ScriptDirectory

    from tuneloop.store.schema import MIGRATIONS

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _documents(url: str) -> dict[str, list]:
    """Every JSON document the columns hold, parsed (text before the upgrade, JSON after it on PostgreSQL)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {
                f"{t}.{c}": [
                    (k, json.loads(v) if isinstance(v, str) else v)
                    for k, v in conn.execute(sa.text(f"SELECT {key}, {c} FROM {t} ORDER BY {key}"))
                ]
                for t, c, key in JSON_COLUMNS
            }
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def old_home(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "postgres" and not _postgres_available():
        pytest.skip("PostgreSQL is not reachable")
    env = _load(request.param, tmp_path / "home")
    yield request.param, env
    if request.param == "postgres":
        from tuneloop.store.engine import dispose_engines

        dispose_engines()
        for name in ("mlflow", "tuneloop"):
            _pg(PG_ADMIN_URL, f"DROP DATABASE IF EXISTS {_url(env, name).rsplit('/', 1)[1]} WITH (FORCE)")


def test_upgrade_keeps_every_row_the_audit_guards_and_the_chain(old_home) -> None:
    backend, env = old_home
    before = {name: _rows(_url(env, name)) for name in ("mlflow", "tuneloop")}
    own = before["tuneloop"]
    # The fixture holds every kind of row the loop makes: a reader of this test knows what "kept" covers.
    for table in (
        "audit_log",
        "records",
        "feedback",
        "monitors",
        "monitor_windows",
        "alert_rules",
        "alerts",
        "notifications",
        "delivery_attempts",
        "loops",
        "retrain_runs",
        "ingest_tokens",
    ):
        assert own[table], f"the a3a2416 fixture has no {table} rows"
    assert before["mlflow"]["registered_models"] and before["mlflow"]["model_versions"]

    documents_before = _documents(_url(env, "tuneloop"))
    upgraded = run_cli("db", "upgrade", "--json", env=env)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert json.loads(upgraded.stdout)["up_to_date"] is True
    after = {name: _rows(_url(env, name)) for name in ("mlflow", "tuneloop")}
    for name, tables in before.items():
        for table, rows in tables.items():
            if table not in VERSION_TABLES:
                assert after[name].get(table) == rows, f"{name}.{table} changed in the upgrade"
    assert after["tuneloop"]["tuneloop_alembic_version"] == [(_head(),)]
    assert _documents(_url(env, "tuneloop")) == documents_before  # JSON text became JSON, the same documents

    # The audit log is still append-only, on both backends, after whatever the upgrade rebuilt.
    engine = sa.create_engine(_url(env, "tuneloop"), poolclass=sa.pool.NullPool)
    try:
        for statement in ("UPDATE audit_log SET reason = 'rewritten'", "DELETE FROM audit_log"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(statement))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar() == len(own["audit_log"])
    finally:
        engine.dispose()
    history = run_cli("models", "history", ADAPTER, "--json", env=env)
    assert history.returncode == 0, history.stderr[-3000:]
    moves = json.loads(history.stdout)
    assert moves["chain_intact"] is True
    assert [m["reason"] for m in moves["moves"]][-2:] == [
        "fixture: a rollback in the audit log",
        "fixture: forward again",
    ]
    assert backend in ("sqlite", "postgres")


def test_what_a3a2416_stored_still_loads_after_the_upgrade(old_home, tmp_path: Path) -> None:
    from tuneloop.monitors.drift.judge import Reference
    from tuneloop.monitors.ingestion.records import parse_records, store
    from tuneloop.monitors.references import REFERENCE_CACHE_VERSION
    from tuneloop.monitors.service import judge_pending
    from tuneloop.names import Tag
    from tuneloop.pipelines.training.recipes import RECIPE_CLASSES
    from tuneloop.pipelines.training.run import recipe_of_run
    from tuneloop.registry.catalog import resolve
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings, StoreSettings

    _backend, env = old_home
    assert run_cli("db", "upgrade", env=env).returncode == 0
    settings = Settings(
        home=env["TUNELOOP_HOME"],
        cache_dir=env["TUNELOOP_CACHE_DIR"],
        stores=StoreSettings(mlflow_uri=_url(env, "mlflow"), database_url=_url(env, "tuneloop")),
    )
    rc = RegistryClient(settings)

    # The stored recipe.json (every method's section) of both versions' training runs reads as a Recipe.
    champion = resolve(rc, f"{ADAPTER}@champion")
    for version in (1, int(champion.version)):
        mv = rc.mlflow.get_model_version(ADAPTER, str(version))
        recipe = recipe_of_run(rc, mv.tags[Tag.TRAINING_RUN_ID])
        assert isinstance(recipe, RECIPE_CLASSES[recipe.method]) and recipe.name == ADAPTER

    # A cache of reference statistics written by older code (classes under `monitors.*`) is never unpickled,
    # and an unreadable cache under today's key is rebuilt.
    cache = Path(settings.cache_dir) / "monitor-references"
    cache.mkdir(parents=True)
    with rc.stores.engine.connect() as conn:
        digest = conn.execute(sa.text("SELECT reference_sha256 FROM monitors WHERE name = 'support-champion'")).scalar()
    old_cache = cache / f"{digest.removeprefix('sha256:')}.pickle"  # a3a2416's key: the digest alone
    old_cache.write_bytes(b"cmonitors.drift\nReference\n.")  # a pickle naming the old module path
    current = cache / f"{digest.removeprefix('sha256:')}-v{REFERENCE_CACHE_VERSION}.pickle"
    current.write_bytes(b"not a pickle: a write cut short")

    # Windows a3a2416 judged know their model version now: that of the newest record they held (0007).
    with rc.stores.engine.connect() as conn:
        unversioned = conn.execute(
            sa.text(
                "SELECT count(*) FROM monitor_windows w JOIN records r ON r.seq = w.last_seq "
                "WHERE w.version IS NULL OR w.version <> r.version"
            )
        ).scalar()
        versioned = conn.execute(sa.text("SELECT count(*) FROM monitor_windows WHERE version IS NOT NULL")).scalar()
    assert unversioned == 0 and versioned > 0

    # New records of the champion are judged against the monitor's pinned reference (an a3a2416 artifact),
    # continuing that version's windows: the monitor had no per-version state, so the holder is adopted.
    with rc.stores.engine.connect() as conn:
        windows_before = conn.execute(sa.text("SELECT count(*) FROM monitor_windows")).scalar()
        prompts = [r[0] for r in conn.execute(sa.text("SELECT prompt FROM records ORDER BY id LIMIT 100"))]
    records = [{"model": f"{ADAPTER}@champion", "prompt": p, "output": "ok"} for p in prompts]
    store(rc.stores, parse_records(records, 100_000), rc.models)
    judged = judge_pending(rc, "support-champion").judged  # the next window after the last one a3a2416 judged
    assert len(judged) == 1 and judged[0]["status"] in ("ok", "drift")
    with rc.stores.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM monitor_windows")).scalar() == windows_before + 1
    assert "monitors" not in sys.modules and "monitors.drift.judge" not in sys.modules  # the old cache was never opened
    assert isinstance(pickle.loads(current.read_bytes()), Reference)  # rebuilt


def test_nan_that_old_code_wrote_becomes_null_on_postgres_and_reads_back_as_nan(old_home) -> None:
    import math

    from tuneloop.monitors.service import judged_windows
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings, StoreSettings

    backend, env = old_home
    engine = sa.create_engine(_url(env, "tuneloop"), poolclass=sa.pool.NullPool)
    try:
        with (
            engine.begin() as conn
        ):  # what Python's json.dumps wrote for a NaN statistic (PostgreSQL's json refuses it)
            first = conn.execute(sa.text("SELECT min(id) FROM monitor_windows")).scalar()
            conn.execute(
                sa.text("UPDATE monitor_windows SET checks = :text WHERE id = :id"),
                {
                    "id": first,
                    "text": json.dumps(
                        [{"check": "descriptors", "statistic": float("nan"), "p_value": 0.5, "drifted": False}]
                    ),
                },
            )
        assert run_cli("db", "upgrade", env=env).returncode == 0
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT checks FROM monitor_windows WHERE id = :id"), {"id": first}).scalar()
    finally:
        engine.dispose()
    stored = json.loads(stored) if isinstance(stored, str) else stored
    if backend == "postgres":
        assert stored[0]["statistic"] is None and stored[0]["p_value"] == 0.5
    rc = RegistryClient(
        Settings(
            home=env["TUNELOOP_HOME"],
            stores=StoreSettings(mlflow_uri=_url(env, "mlflow"), database_url=_url(env, "tuneloop")),
        )
    )
    ids, windows, _ = judged_windows(rc, "support-champion")
    check = windows[ids.index(first)].checks[0]
    assert math.isnan(check.statistic) and check.p_value == 0.5 and len(ids) == 6
