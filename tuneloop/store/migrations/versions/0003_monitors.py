"""Monitors and the windows they checked.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "monitors",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("reference_sha256", sa.String(80), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "monitor_windows",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("monitor", sa.String(200), sa.ForeignKey("monitors.name", ondelete="CASCADE"), nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("drifted_checks", sa.Text, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_monitor_windows_monitor", "monitor_windows", ["monitor", "id"])


def downgrade() -> None:
    op.drop_table("monitor_windows")
    op.drop_table("monitors")
