"""the curation event feed: annotations, gold stars and snapshots after a cursor

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "curation_events",
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("curation_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_curation_events_project_sequence", ["project", "sequence"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("curation_events", schema=None) as batch_op:
        batch_op.drop_index("ix_curation_events_project_sequence")
    op.drop_table("curation_events")
