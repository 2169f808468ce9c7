"""`tuneloop db check|upgrade` and `stores.migrate_on_start = false`, on empty SQLite and PostgreSQL stores:
nothing migrates behind the operator's back, the pending revisions are named, one upgrade makes both current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, run_cli


@pytest.fixture(params=BACKENDS)
def empty_stores(request: pytest.FixtureRequest, tmp_path: Path):
    """TUNELOOP_* variables for two empty databases (no tables at all), with migrate_on_start off."""
    env = {"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP_STORES__MIGRATE_ON_START": "false"}
    if request.param == "postgres":
        mlflow_uri, database_url = request.getfixturevalue("empty_postgres_databases")
        env |= {"TUNELOOP_STORES__MLFLOW_URI": mlflow_uri, "TUNELOOP_STORES__DATABASE_URL": database_url}
    return env


def _database_url(env: dict[str, str]) -> str:
    return env.get("TUNELOOP_STORES__DATABASE_URL") or f"sqlite:///{Path(env['TUNELOOP_HOME']) / 'tuneloop.db'}"


def _status(env: dict[str, str]) -> dict[str, dict]:
    from tuneloop.store.schema import mlflow_status, tuneloop_status

    mlflow_uri = env.get("TUNELOOP_STORES__MLFLOW_URI") or f"sqlite:///{Path(env['TUNELOOP_HOME']) / 'mlflow.db'}"
    return {s.store: s.as_dict() for s in (mlflow_status(mlflow_uri), tuneloop_status(_database_url(env)))}


def test_nothing_migrates_on_start_until_db_upgrade(empty_postgres_databases: tuple[str, str], tmp_path: Path) -> None:
    """On PostgreSQL, as in production (the SQLite path shares the code, and is checked below)."""
    env = {
        "TUNELOOP_HOME": str(tmp_path / "home"),
        "TUNELOOP_STORES__MIGRATE_ON_START": "false",
        "TUNELOOP_STORES__MLFLOW_URI": empty_postgres_databases[0],
        "TUNELOOP_STORES__DATABASE_URL": empty_postgres_databases[1],
    }
    check = run_cli("db", "check", "--json", env=env)
    assert check.returncode == 1, check.stderr
    stores = {s["store"]: s for s in json.loads(check.stdout)["stores"]}
    assert stores["tuneloop"]["current"] is None and stores["tuneloop"]["pending"] == [
        "0001",
        "0002",
        "0003",
        "0004",
        "0005",
        "0006",
        "0007",
        "0008",
        "0009",
        "0010",
    ]
    assert stores["mlflow"]["current"] is None and stores["mlflow"]["pending"][-1] == stores["mlflow"]["head"]

    refused = run_cli("models", "list", "--json", env=env)
    assert refused.returncode != 0 and "tuneloop db upgrade" in refused.stderr and "migrate_on_start" in refused.stderr
    assert _status(env) == stores  # refusing created no tables

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # two release jobs at once take turns on a lock, neither fails
        both = list(pool.map(lambda _: run_cli("db", "upgrade", "--json", env=env), range(2)))
    for upgraded in both:
        assert upgraded.returncode == 0, upgraded.stderr
        assert json.loads(upgraded.stdout)["up_to_date"]
    assert all(s["up_to_date"] for s in _status(env).values())
    assert run_cli("models", "list", "--json", env=env).returncode == 0


def test_a_database_behind_by_two_revisions_names_exactly_those(empty_stores: dict[str, str]) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from tuneloop.errors import StoreError
    from tuneloop.store.schema import MIGRATIONS, require_current, tuneloop_status

    url = _database_url(empty_stores)
    Path(empty_stores["TUNELOOP_HOME"]).mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    engine.dispose()
    found = tuneloop_status(url)
    assert (found.current, found.pending, found.head) == (
        "0003",
        ["0004", "0005", "0006", "0007", "0008", "0009", "0010"],
        "0010",
    )
    with pytest.raises(StoreError, match="at revision 0003; 7 migration"):
        require_current(found)


def test_checking_an_embedded_home_that_does_not_exist_yet_creates_nothing(tmp_path: Path) -> None:
    from tuneloop.errors import StoreError
    from tuneloop.settings import Settings
    from tuneloop.store.schema import require_current, status

    found = status(Settings(home=tmp_path / "home"))
    assert [(s.store, s.current) for s in found] == [("mlflow", None), ("tuneloop", None)]
    assert (
        found[1].pending == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010"]
        and not (tmp_path / "home").exists()
    )
    with pytest.raises(StoreError, match="has no tables yet") as refused:
        require_current(found[0])
    assert "tuneloop db upgrade" in (refused.value.hint or "")
