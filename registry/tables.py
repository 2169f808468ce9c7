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

# --- production records (written by the ingest API and `tuneloop monitor ingest`) -----------------
_BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite autoincrements INTEGER keys only

records = sa.Table(
    "records",
    metadata,
    sa.Column("seq", _BIG_ID, primary_key=True, autoincrement=True),  # arrival order, for count windows
    sa.Column("id", sa.String(64), nullable=False, unique=True),  # client-chosen or generated; retries reuse it
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),  # resolved at ingest when an alias is given
    sa.Column("alias", sa.String(200), nullable=True),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("prediction", sa.Text, nullable=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("meta", sa.Text, nullable=False, default="{}"),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_records_model_ts", "model", "ts"),
)

# Feedback may come with the record or later, by record id; the latest feedback wins.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("record_id", sa.String(64), sa.ForeignKey("records.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("rating", sa.Float, nullable=True),
    sa.Column("label", sa.Text, nullable=True),
    sa.Column("reference", sa.Text, nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# Write tokens of the ingest API, stored as sha256 hashes only.
ingest_tokens = sa.Table(
    "ingest_tokens",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

# Idempotency keys of acknowledged requests: a retry gets the stored answer and stores nothing again.
ingest_requests = sa.Table(
    "ingest_requests",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# Monitors declared with `tuneloop monitor add`, and the windows they checked.
monitors = sa.Table(
    "monitors",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # the validated YAML, as JSON
    sa.Column("reference_sha256", sa.String(80), nullable=False),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),  # one run per monitor, a step per window
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

monitor_windows = sa.Table(
    "monitor_windows",
    metadata,
    sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("monitor", sa.String(200), sa.ForeignKey("monitors.name", ondelete="CASCADE"), nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),  # the newest record the window held
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("drifted_checks", sa.Text, nullable=False),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_monitor_windows_monitor", "monitor", "id"),
)
