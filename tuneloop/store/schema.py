"""Schema versions of the two databases tuneloop uses — MLflow's store and tuneloop's own tables — and
their explicit upgrade (`tuneloop db check`, `tuneloop db upgrade`).

By default both are migrated on first use. Deployments that forbid migrating on start set
`stores.migrate_on_start = false`: tuneloop then refuses to open a database whose schema is behind,
naming the command that upgrades it, and a release job runs `tuneloop db upgrade` once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneloop.errors import StoreError
from tuneloop.settings import Settings, redact_url
from tuneloop.store.locks import lock_key

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass
class SchemaStatus:
    store: str  # "mlflow" | "tuneloop"
    url: str  # password redacted
    current: str | None  # None: no tables yet
    head: str
    pending: list[str] = field(default_factory=list)  # revisions still to apply, oldest first

    @property
    def up_to_date(self) -> bool:
        return not self.pending

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"up_to_date": self.up_to_date}


def _tuneloop_scripts():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def _mlflow_scripts():
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config(db_url=""))


def _pending(scripts: Any, current: str | None) -> tuple[str, list[str]]:
    head = scripts.get_current_head()
    revisions = [r.revision for r in scripts.iterate_revisions(head, current)]  # newest first
    return head, list(reversed(revisions))


def _current(engine: sa.Engine, version_table: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    if engine.url.get_backend_name() == "sqlite" and engine.url.database and not Path(engine.url.database).exists():
        return None  # connecting would create the file: report it as empty instead
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn, opts={"version_table": version_table}).get_current_revision()
    except sa.exc.OperationalError as exc:
        raise StoreError(
            f"cannot open the database {redact_url(str(engine.url))}: {str(exc.orig).strip()[:300]}",
            hint="check the URL in `stores` and that the database server is running",
        ) from None


def _status(store: str, url: str, version_table: str, scripts: Any) -> SchemaStatus:
    engine = _raw_engine(url)
    try:
        current = _current(engine, version_table)
        head, pending = _pending(scripts, current)
        return SchemaStatus(store, redact_url(url), current, head, pending)
    finally:
        engine.dispose()


def migrate(engine: sa.Engine) -> None:
    """Apply Alembic migrations up to head; two processes starting at once serialise on a lock."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key("tuneloop.migrate"))))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except sa.exc.OperationalError as exc:
        raise StoreError(
            f"cannot open tuneloop's database: {exc.orig}",
            hint="check `stores.database_url` and that the database server is running",
        ) from None


def tuneloop_status(database_url: str) -> SchemaStatus:
    return _status("tuneloop", database_url, "tuneloop_alembic_version", _tuneloop_scripts())


def mlflow_status(mlflow_uri: str) -> SchemaStatus:
    if not mlflow_uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        raise StoreError(
            f"`stores.mlflow_uri` {redact_url(mlflow_uri)} is not a database",
            hint="schema checks apply to a database-backed MLflow store",
        )
    return _status("mlflow", mlflow_uri, "alembic_version", _mlflow_scripts())


def status(settings: Settings) -> list[SchemaStatus]:
    return [mlflow_status(settings.mlflow_uri), tuneloop_status(settings.database_url)]


def upgrade(settings: Settings) -> list[SchemaStatus]:
    """Apply every pending migration of both databases; the status afterwards."""
    from mlflow.store.db.utils import _initialize_tables, _upgrade_db, create_sqlalchemy_engine

    from tuneloop.quiet import quiet_mlflow

    quiet_mlflow()
    _make_sqlite_folder(settings.mlflow_uri)
    with _upgrade_lock(settings.mlflow_uri):
        before = mlflow_status(settings.mlflow_uri)  # read under the lock: a concurrent upgrade may have run
        if before.pending:
            engine = create_sqlalchemy_engine(settings.mlflow_uri)
            try:
                if before.current is None:
                    _initialize_tables(engine)  # MLflow's own first-run path: base tables, then every migration
                else:
                    _upgrade_db(engine)
            finally:
                engine.dispose()
    _make_sqlite_folder(settings.database_url)  # tuneloop's own migrate() takes its own lock
    engine = _raw_engine(settings.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return status(settings)


@contextmanager
def _upgrade_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, a session advisory lock held while MLflow's schema is upgraded: two `tuneloop db upgrade`
    (two release jobs, two pods) take turns instead of racing through the same migrations."""
    engine = _raw_engine(url)
    try:
        if engine.url.get_backend_name() != "postgresql":
            yield
            return
        with engine.connect() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_lock(lock_key("mlflow.upgrade"))))
            try:
                yield
            finally:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(lock_key("mlflow.upgrade"))))
    finally:
        engine.dispose()


def require_current(found: SchemaStatus) -> None:
    """Raise when a database is behind (used instead of migrating when `stores.migrate_on_start` is false)."""
    if found.pending:
        state = "has no tables yet" if found.current is None else f"is at revision {found.current}"
        raise StoreError(
            f"the {found.store} database {found.url} {state}; {len(found.pending)} migration(s) pending "
            f"(up to {found.head}) and `stores.migrate_on_start` is false",
            hint="run `tuneloop db upgrade` (take a backup first), then retry",
        )


def _raw_engine(url: str) -> sa.Engine:
    try:
        return sa.create_engine(url, poolclass=sa.pool.NullPool)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError):
        raise StoreError(
            f"{redact_url(url)} is not a database URL", hint="use sqlite:///path/file.db or postgresql://user@host/db"
        ) from None


def _make_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
