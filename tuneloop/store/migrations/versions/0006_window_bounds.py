"""Windows that know where they lie, and alert rules that remember where they stand.

monitor_windows gains first_seq (count windows), window_start/window_end (time windows), late and
rejudged; monitor_cursors keeps how far each monitor has looked for late records; alert_rule_states
keeps each rule's replay state so an evaluation reads only the windows judged since; records get
an index on (model, seq) for count windows. Columns are
added, never rebuilt: on SQLite no table is copied, so no trigger is dropped.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("monitor_windows", sa.Column("first_seq", sa.BigInteger, nullable=True))
    op.add_column("monitor_windows", sa.Column("window_start", sa.DateTime(timezone=True), nullable=True))
    op.add_column("monitor_windows", sa.Column("window_end", sa.DateTime(timezone=True), nullable=True))
    op.add_column("monitor_windows", sa.Column("late", sa.Integer, nullable=False, server_default="0"))
    op.add_column("monitor_windows", sa.Column("rejudged", sa.Boolean, nullable=False, server_default=sa.false()))
    # a count window reads the model's records from a given arrival number on: without this index the
    # database scans every record of the model, and a check's cost grows with the monitor's age
    op.create_index("ix_records_model_seq", "records", ["model", "seq"])
    op.create_table(
        "monitor_cursors",
        sa.Column("monitor", sa.String(200), sa.ForeignKey("monitors.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("seen_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "alert_rule_states",
        sa.Column("rule", sa.String(200), primary_key=True),
        sa.Column("last_window_id", sa.BigInteger, nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_rule_states")
    op.drop_table("monitor_cursors")
    op.drop_index("ix_records_model_seq", table_name="records")
    for column in ("rejudged", "late", "window_end", "window_start", "first_seq"):
        op.drop_column("monitor_windows", column)
