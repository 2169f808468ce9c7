"""A served model's traffic policy (canary and shadow), beside its aliases in the serving state.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "traffic_policies",
        sa.Column("model", sa.String(400), primary_key=True),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("set_by", sa.String(200), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("traffic_policies")
