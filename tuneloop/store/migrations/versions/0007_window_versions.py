"""Windows per model version, and the smallest p-value of each window.

monitor_windows gains `version` (the model version whose records the window held: a monitor on
NAME@ALIAS starts afresh when the alias moves) and `lowest_p` (what scores.png draws, read without
decoding every window's statistics). Windows judged before get their version from the newest record
they held; empty ones keep null (they held no version's records). monitor_versions keeps, per
(monitor, version), the reference that version is judged against; alert_rule_states remembers which
version a rule's streak counts. Columns and tables are added, none rebuilt.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("monitor_windows", sa.Column("lowest_p", sa.Float, nullable=True))
    op.add_column("monitor_windows", sa.Column("version", sa.Integer, nullable=True))
    op.execute(
        "UPDATE monitor_windows SET version = (SELECT records.version FROM records "
        "WHERE records.seq = monitor_windows.last_seq)"
    )
    op.create_index("ix_monitor_windows_version", "monitor_windows", ["monitor", "version", "id"])
    op.add_column("alert_rule_states", sa.Column("version", sa.Integer, nullable=True))
    op.create_table(
        "monitor_versions",
        sa.Column("monitor", sa.String(200), sa.ForeignKey("monitors.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("reference_sha256", sa.String(80), nullable=True),
        sa.Column("reference_last_seq", sa.BigInteger, nullable=True),
        sa.Column("reference_source", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("monitor_versions")
    op.drop_column("alert_rule_states", "version")
    op.drop_index("ix_monitor_windows_version", table_name="monitor_windows")
    op.drop_column("monitor_windows", "version")
    op.drop_column("monitor_windows", "lowest_p")
