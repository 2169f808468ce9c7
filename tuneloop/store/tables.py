"""tuneloop's own tables. Alembic migrations in `tuneloop/store/migrations` create and evolve them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from tuneloop.store.types import JSONDocument, UTCDateTime

metadata = sa.MetaData()

NAME_LENGTH = 200  # names tuneloop or a user gives: monitors, rules, loops, tokens, leases, aliases
MODEL_LENGTH = 400  # a registered model's name
ID_LENGTH = 64  # record ids, MLflow run and trace ids, sha256 hashes
_BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite autoincrements INTEGER keys only


def _serial_id() -> sa.Column[int]:
    """An autoincrementing key (BIGINT on PostgreSQL)."""
    return sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True)


def _name_key() -> sa.Column[str]:
    return sa.Column("name", sa.String(NAME_LENGTH), primary_key=True)


def _model(*, primary_key: bool = False) -> sa.Column[str]:
    return sa.Column("model", sa.String(MODEL_LENGTH), primary_key=primary_key, nullable=False)


def _utc(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def _record_id(*, primary_key: bool) -> sa.Column[str]:
    """The record a row belongs to, deleted with it."""
    fk = sa.ForeignKey("records.id", ondelete="CASCADE")
    return sa.Column("record_id", sa.String(ID_LENGTH), fk, primary_key=primary_key, nullable=False)


def _monitor(*, primary_key: bool) -> sa.Column[str]:
    """The monitor a row belongs to, deleted with it."""
    fk = sa.ForeignKey("monitors.name", ondelete="CASCADE")
    return sa.Column("monitor", sa.String(NAME_LENGTH), fk, primary_key=primary_key, nullable=False)


def _declared(table: str, *columns: sa.Column[object]) -> sa.Table:
    """A table of things a user declares from YAML (`tuneloop monitor|alert|loop add`): each has a name, the
    validated YAML as `spec`, and the time it was declared."""
    spec = sa.Column("spec", JSONDocument(), nullable=False)
    return sa.Table(table, metadata, _name_key(), spec, *columns, _utc("created_at"))


# Append-only: database triggers refuse UPDATE and DELETE, and each row carries the hash of the
# previous one, so an edit made by going around the triggers breaks the chain visibly.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _utc("at"),
    sa.Column("actor", sa.String(NAME_LENGTH), nullable=False),
    _model(),
    sa.Column("alias", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("from_version", sa.Integer, nullable=True),
    sa.Column("to_version", sa.Integer, nullable=True),
    sa.Column("forced", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("gates", sa.Text, nullable=False, default="[]"),
    sa.Column("prev_hash", sa.String(ID_LENGTH), nullable=False),
    sa.Column("entry_hash", sa.String(ID_LENGTH), nullable=False),
    sa.Index("ix_audit_model_alias", "model", "alias", "id"),
)

# Which audit entries have been mirrored into MLflow (kept apart so audit_log stays append-only).
audit_mirror = sa.Table(
    "audit_mirror",
    metadata,
    sa.Column("audit_id", sa.Integer, sa.ForeignKey("audit_log.id"), primary_key=True),
    sa.Column("run_id", sa.String(ID_LENGTH), nullable=False),
)

# --- production records (written by the ingest API and `tuneloop monitor ingest`) -----------------
records = sa.Table(
    "records",
    metadata,
    sa.Column("seq", _BIG_ID, primary_key=True, autoincrement=True),  # arrival order, for count windows
    sa.Column("id", sa.String(ID_LENGTH), nullable=False, unique=True),  # client-chosen or generated; retries reuse it
    _model(),
    sa.Column("version", sa.Integer, nullable=True),  # resolved at ingest when an alias is given
    sa.Column("alias", sa.String(NAME_LENGTH), nullable=True),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("prediction", sa.Text, nullable=True),
    _utc("ts"),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("meta", JSONDocument(), nullable=False, default=dict),
    _utc("received_at"),
    sa.Index("ix_records_model_ts", "model", "ts"),
    sa.Index("ix_records_model_seq", "model", "seq"),  # count windows read a model's records in arrival order (0006)
)
# What a record is (migration 0008): `live` an answer sent to a caller (what outside servers POST), `canary`
# a challenger's answer sent to a caller, `shadow` a challenger's answer nobody saw, with `pair_of` the id
# of the live record it shadows.
records.append_column(sa.Column("kind", sa.String(20), nullable=False, server_default="live"))
records.append_column(sa.Column("pair_of", sa.String(ID_LENGTH), nullable=True))

# Feedback may come with the record or later, by record id; the latest feedback wins.
feedback = sa.Table(
    "feedback",
    metadata,
    _record_id(primary_key=True),
    sa.Column("rating", sa.Float, nullable=True),
    sa.Column("label", sa.Text, nullable=True),
    sa.Column("reference", sa.Text, nullable=True),
    _utc("at"),
)
# Where feedback came from and whether its record's trace carries it (migration 0010): `source` is null for
# feedback posted to tuneloop, `mlflow:<source id>` for a trusted reviewer's assessment made in MLflow;
# `mirrored_at` is the `at` last written to the trace as assessments (null: not yet).
feedback.append_column(sa.Column("source", sa.String(300), nullable=True))
feedback.append_column(_utc("mirrored_at", nullable=True))

# Bearer tokens, stored as sha256 hashes only, each with the one scope it grants (migration 0008:
# `serve` calls the OpenAI-compatible API, `ingest` posts records and feedback; older tokens are `ingest`).
ingest_tokens = sa.Table(
    "ingest_tokens",
    metadata,
    _name_key(),
    sa.Column("token_sha256", sa.String(ID_LENGTH), nullable=False, unique=True),
    _utc("created_at"),
    _utc("revoked_at", nullable=True),
)
ingest_tokens.append_column(sa.Column("scope", sa.String(20), nullable=False, server_default="ingest"))

# Idempotency keys of acknowledged requests: a retry gets the stored answer and stores nothing again.
ingest_requests = sa.Table(
    "ingest_requests",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("response", JSONDocument(), nullable=False),
    _utc("at"),
)

# Monitors declared with `tuneloop monitor add`, and the windows they checked.
monitors = _declared(
    "monitors",
    sa.Column("reference_sha256", sa.String(80), nullable=False),
    sa.Column("mlflow_run_id", sa.String(ID_LENGTH), nullable=True),  # one run per monitor, a step per window
)

monitor_windows = sa.Table(
    "monitor_windows",
    metadata,
    _serial_id(),
    _monitor(primary_key=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),  # the newest record the window held
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("drifted_checks", JSONDocument(), nullable=False),
    _utc("checked_at"),
    sa.Index("ix_monitor_windows_monitor", "monitor", "id"),
)
# Per-check statistics of each window (JSON), so alert rules on a check's statistic can replay history.
monitor_windows.append_column(sa.Column("checks", JSONDocument(), nullable=True))
# Where the window lies (migration 0006): count windows by the first and last record they hold, time
# windows by their bounds. `late` counts records that arrived for the window after it was judged;
# `rejudged` marks a `monitor check --latest` look, which neither moves the cursor nor feeds alert rules.
monitor_windows.append_column(sa.Column("first_seq", sa.BigInteger, nullable=True))
monitor_windows.append_column(_utc("window_start", nullable=True))
monitor_windows.append_column(_utc("window_end", nullable=True))
monitor_windows.append_column(sa.Column("late", sa.Integer, nullable=False, server_default="0"))
monitor_windows.append_column(sa.Column("rejudged", sa.Boolean, nullable=False, server_default=sa.false()))
# The smallest p-value of the window's checks (migration 0007): what scores.png draws, read without
# decoding every window's statistics.
monitor_windows.append_column(sa.Column("lowest_p", sa.Float, nullable=True))
# The model version whose records the window held (migration 0007): a monitor on NAME@ALIAS keeps its
# cursor, windows and streaks per version, and starts afresh when the alias moves.
monitor_windows.append_column(sa.Column("version", sa.Integer, nullable=True))
sa.Index("ix_monitor_windows_version", monitor_windows.c.monitor, monitor_windows.c.version, monitor_windows.c.id)

# Each model version a monitor watched (migration 0007), with the reference it is judged against:
# the monitor's own for its first version and for a file; the version's eval data; or, for a pinned
# production window, the version's first `window.size` records (up to `reference_last_seq`, never
# judged against themselves). `reference_sha256` is null while those records are still arriving.
monitor_versions = sa.Table(
    "monitor_versions",
    metadata,
    _monitor(primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("reference_sha256", sa.String(80), nullable=True),
    sa.Column("reference_last_seq", sa.BigInteger, nullable=True),
    sa.Column("reference_source", sa.Text, nullable=True),
    _utc("started_at"),
)

# How far each monitor has looked at its records: late records are those past `seen_seq` that fall in
# a window already judged.
monitor_cursors = sa.Table(
    "monitor_cursors",
    metadata,
    _monitor(primary_key=True),
    sa.Column("seen_seq", sa.BigInteger, nullable=False),
)

# --- the closed loop: alert rules, alerts, notifications, leases, retraining runs -----------------
alert_rules = _declared("alert_rules", sa.Column("monitor", sa.String(NAME_LENGTH), nullable=False))

# Where each alert rule stands after the windows it has read (migration 0006): the next evaluation
# continues from here instead of replaying the monitor's whole history.
alert_rule_states = sa.Table(
    "alert_rule_states",
    metadata,
    sa.Column("rule", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("last_window_id", sa.BigInteger, nullable=False),
    sa.Column("state", JSONDocument(), nullable=False),
)
# The model version whose windows the rule's streak counts (migration 0007)
alert_rule_states.append_column(sa.Column("version", sa.Integer, nullable=True))

# One row per incident, never one per window: (rule, opened_window) is unique, so two evaluators
# replaying the same windows cannot open the same incident twice.
alerts = sa.Table(
    "alerts",
    metadata,
    _serial_id(),
    sa.Column("rule", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("monitor", sa.String(NAME_LENGTH), nullable=False),
    _model(),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # open | resolved
    sa.Column("opened_window_id", sa.BigInteger, nullable=False),
    sa.Column("first_window_id", sa.BigInteger, nullable=False),
    sa.Column("closed_window_id", sa.BigInteger, nullable=True),
    sa.Column("summary", JSONDocument(), nullable=False),  # what held, drifted checks per window
    _utc("opened_at"),
    _utc("closed_at", nullable=True),
    sa.Column("mlflow_run_id", sa.String(ID_LENGTH), nullable=True),  # the mirror; filled once MLflow has it
    sa.UniqueConstraint("rule", "opened_window_id", name="uq_alerts_incident"),
)

# The notification outbox: one row per event and sink, delivered by the scheduler with retries.
notifications = sa.Table(
    "notifications",
    metadata,
    _serial_id(),
    sa.Column("event", sa.String(60), nullable=False),  # alert.opened, alert.resolved, challenger.registered
    sa.Column("alert_id", sa.BigInteger, nullable=True),
    sa.Column("sink", sa.Text, nullable=False),  # "log" or a webhook URL (may hold a token: never logged)
    sa.Column("payload", JSONDocument(), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    _utc("next_attempt_at"),
    _utc("created_at"),
    sa.Index("ix_notifications_pending", "state", "next_attempt_at"),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    _serial_id(),
    sa.Column("notification_id", sa.BigInteger, sa.ForeignKey("notifications.id", ondelete="CASCADE"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    _utc("at"),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # HTTP status or the error, never the URL
    sa.Column("seconds", sa.Float, nullable=False),
)

# Named leases: the active scheduler, and the owner of each retraining run.
leases = sa.Table(
    "leases",
    metadata,
    _name_key(),
    sa.Column("owner", sa.String(NAME_LENGTH), nullable=False),
    _utc("expires_at"),
    _utc("acquired_at"),
)

# Retraining policies declared with `tuneloop loop add`.
loops = _declared("loops", _model(), _utc("last_cron_at", nullable=True))  # last_cron_at: the last cron fire handled

# Durable retraining runs: queued -> curating -> training -> evaluating -> registered | failed.
retrain_runs = sa.Table(
    "retrain_runs",
    metadata,
    _serial_id(),
    sa.Column("loop", sa.String(NAME_LENGTH), nullable=False),
    _model(),
    sa.Column("trigger", sa.String(20), nullable=False),  # alert | cron | manual
    sa.Column("trigger_key", sa.String(200), nullable=False, unique=True),  # alert:<id>, cron:<time>, manual:<uuid>
    sa.Column("alert_id", sa.BigInteger, nullable=True),
    sa.Column("champion_version", sa.Integer, nullable=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("training_run_id", sa.String(ID_LENGTH), nullable=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("details", JSONDocument(), nullable=False, default=dict),  # data digests, eval runs, decision
    sa.Column("error", sa.Text, nullable=True),
    _utc("created_at"),
    _utc("updated_at"),
    sa.Index("ix_retrain_runs_state", "state"),
)

# A served model's traffic policy (migration 0009): the canary and shadow sections of `TrafficPolicy`, as
# JSON. No row: the champion answers every request. Every change is also an audit entry.
traffic_policies = sa.Table(
    "traffic_policies",
    metadata,
    _model(primary_key=True),
    sa.Column("policy", JSONDocument(), nullable=False),
    sa.Column("set_by", sa.String(NAME_LENGTH), nullable=False),
    _utc("set_at"),
)

# --- served requests in MLflow (migration 0010) ---------------------------------------------------
# The MLflow trace of each exported served record (a sampled share; a record without a row has no trace).
record_traces = sa.Table(
    "record_traces",
    metadata,
    _record_id(primary_key=True),
    _model(),
    sa.Column("trace_id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("experiment_id", sa.String(ID_LENGTH), nullable=False),
    _utc("exported_at"),
    sa.Index("ix_record_traces_model", "model", "exported_at"),
)

# Assessments made on a record's trace in MLflow (a reviewer in the UI, a judge): every one is kept and
# shown; only a trusted source's (`feedback.trusted_reviewers`) also becomes the record's feedback.
trace_assessments = sa.Table(
    "trace_assessments",
    metadata,
    sa.Column("assessment_id", sa.String(ID_LENGTH), primary_key=True),
    _record_id(primary_key=False),
    sa.Column("trace_id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("value", JSONDocument(), nullable=True),
    sa.Column("source_type", sa.String(20), nullable=False),
    sa.Column("source_id", sa.String(300), nullable=False),
    sa.Column("trusted", sa.Boolean, nullable=False),
    _utc("updated_at"),
    _utc("imported_at"),
    sa.Index("ix_trace_assessments_record", "record_id"),
)
