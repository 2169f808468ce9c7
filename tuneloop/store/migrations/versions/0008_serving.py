"""What a record is, and what a token may do.

records gain `kind` (`live`, `canary`, `shadow`; every earlier record was an answer sent to a caller:
`live`) and `pair_of` (the live record a shadow answer shadows). ingest_tokens gain `scope` (`serve` or
`ingest`; every earlier token was an ingest token). Columns are added, none rebuilt.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("records", sa.Column("kind", sa.String(20), nullable=False, server_default="live"))
    op.add_column("records", sa.Column("pair_of", sa.String(64), nullable=True))
    op.add_column("ingest_tokens", sa.Column("scope", sa.String(20), nullable=False, server_default="ingest"))


def downgrade() -> None:
    op.drop_column("ingest_tokens", "scope")
    op.drop_column("records", "pair_of")
    op.drop_column("records", "kind")
