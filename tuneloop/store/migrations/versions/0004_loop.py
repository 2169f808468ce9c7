"""The closed loop: window check statistics, alert rules, alerts, notifications, leases, loops, retraining runs.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_NOW = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("monitor_windows") as batch:
        batch.add_column(sa.Column("checks", sa.Text, nullable=True))
    op.create_table(
        "alert_rules",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("monitor", sa.String(200), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("monitor", sa.String(200), nullable=False),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("opened_window_id", sa.BigInteger, nullable=False),
        sa.Column("first_window_id", sa.BigInteger, nullable=False),
        sa.Column("closed_window_id", sa.BigInteger, nullable=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("opened_at", _NOW, nullable=False),
        sa.Column("closed_at", _NOW, nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.UniqueConstraint("rule", "opened_window_id", name="uq_alerts_incident"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("event", sa.String(60), nullable=False),
        sa.Column("alert_id", sa.BigInteger, nullable=True),
        sa.Column("sink", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _NOW, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
    )
    op.create_index("ix_notifications_pending", "notifications", ["state", "next_attempt_at"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column(
            "notification_id", sa.BigInteger, sa.ForeignKey("notifications.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", _NOW, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("expires_at", _NOW, nullable=False),
        sa.Column("acquired_at", _NOW, nullable=False),
    )
    op.create_table(
        "loops",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("last_cron_at", _NOW, nullable=True),
        sa.Column("created_at", _NOW, nullable=False),
    )
    op.create_table(
        "retrain_runs",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("loop", sa.String(200), nullable=False),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("trigger_key", sa.String(200), nullable=False, unique=True),
        sa.Column("alert_id", sa.BigInteger, nullable=True),
        sa.Column("champion_version", sa.Integer, nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("training_run_id", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", _NOW, nullable=False),
        sa.Column("updated_at", _NOW, nullable=False),
    )
    op.create_index("ix_retrain_runs_state", "retrain_runs", ["state"])


def downgrade() -> None:
    for table in ("retrain_runs", "loops", "leases", "delivery_attempts", "notifications", "alerts", "alert_rules"):
        op.drop_table(table)
    with op.batch_alter_table("monitor_windows") as batch:
        batch.drop_column("checks")
