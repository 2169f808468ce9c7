"""tuneloop's own tables. Alembic migrations in `registry/migrations` create and evolve them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Append-only: database triggers refuse UPDATE and DELETE, and each row carries the hash of the
# previous one, so an edit made by going around the triggers breaks the chain visibly.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("alias", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("from_version", sa.Integer, nullable=True),
    sa.Column("to_version", sa.Integer, nullable=True),
    sa.Column("forced", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("gates", sa.Text, nullable=False, default="[]"),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Index("ix_audit_model_alias", "model", "alias", "id"),
)

# Which audit entries have been mirrored into MLflow (kept apart so audit_log stays append-only).
audit_mirror = sa.Table(
    "audit_mirror",
    metadata,
    sa.Column("audit_id", sa.Integer, sa.ForeignKey("audit_log.id"), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
)
