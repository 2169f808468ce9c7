"""Alembic environment: tuneloop always passes an open connection (see tuneloop.store.schema.migrate)."""

from alembic import context

from tuneloop.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="tuneloop_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
