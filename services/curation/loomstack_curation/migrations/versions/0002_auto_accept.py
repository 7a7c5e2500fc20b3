"""auto-accept: the batch's flag, the automatic annotator and the task's auto_accepted

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("curation_imports", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auto_accept", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("auto_accepted_tasks", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("curation_annotations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("annotator", sa.String(length=64), server_default="", nullable=False)
        )
    with op.batch_alter_table("curation_tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auto_accepted", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("curation_tasks", schema=None) as batch_op:
        batch_op.drop_column("auto_accepted")
    with op.batch_alter_table("curation_annotations", schema=None) as batch_op:
        batch_op.drop_column("annotator")
    with op.batch_alter_table("curation_imports", schema=None) as batch_op:
        batch_op.drop_column("auto_accepted_tasks")
        batch_op.drop_column("auto_accept")
