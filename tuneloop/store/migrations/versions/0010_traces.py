"""Served records' MLflow traces, and feedback both ways between records and their traces' assessments.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("source", sa.String(300), nullable=True))
    op.add_column("feedback", sa.Column("mirrored_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "record_traces",
        sa.Column("record_id", sa.String(64), sa.ForeignKey("records.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model", sa.String(400), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_record_traces_model", "record_traces", ["model", "exported_at"])
    op.create_table(
        "trace_assessments",
        sa.Column("assessment_id", sa.String(64), primary_key=True),
        sa.Column("record_id", sa.String(64), sa.ForeignKey("records.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("source_type", sa.String(20), nullable=False),
        sa.Column("source_id", sa.String(300), nullable=False),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_trace_assessments_record", "trace_assessments", ["record_id"])


def downgrade() -> None:
    op.drop_index("ix_trace_assessments_record", "trace_assessments")
    op.drop_table("trace_assessments")
    op.drop_index("ix_record_traces_model", "record_traces")
    op.drop_table("record_traces")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("mirrored_at")
        batch.drop_column("source")
