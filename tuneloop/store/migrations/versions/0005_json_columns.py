"""JSON documents in JSON columns: records.meta, ingest_requests.response, monitors.spec,
monitor_windows.drifted_checks and .checks, alert_rules.spec, alerts.summary, notifications.payload,
loops.spec, retrain_runs.details. (audit_log.gates stays text: the hash chain covers its exact bytes.)

On PostgreSQL the columns become `json` (which keeps the text it is given, byte for byte). Python's json
module wrote NaN and Infinity, which PostgreSQL refuses: those documents are rewritten first with null in
their place (the stores now write null for them). On SQLite a JSON column is text, as before: nothing
changes on disk, and no table is rebuilt.

Revision ID: 0005
Revises: 0004
"""

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = [
    ("records", "meta", "seq"),
    ("ingest_requests", "response", "key"),
    ("monitors", "spec", "name"),
    ("monitor_windows", "drifted_checks", "id"),
    ("monitor_windows", "checks", "id"),
    ("alert_rules", "spec", "name"),
    ("alerts", "summary", "id"),
    ("notifications", "payload", "id"),
    ("loops", "spec", "name"),
    ("retrain_runs", "details", "id"),
]


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for table, column, key in COLUMNS:
        suspects = conn.execute(sa.text(f"SELECT {key}, {column} FROM {table} WHERE {column} ~ 'NaN|Infinity'")).all()
        for row_key, text in suspects:
            cleaned = json.dumps(_finite(json.loads(text)))
            if cleaned != text:
                conn.execute(
                    sa.text(f"UPDATE {table} SET {column} = :text WHERE {key} = :key"),
                    {"text": cleaned, "key": row_key},
                )
        op.alter_column(table, column, type_=sa.JSON(), postgresql_using=f"{column}::json")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for table, column, _key in COLUMNS:
        op.alter_column(table, column, type_=sa.Text(), postgresql_using=f"{column}::text")
