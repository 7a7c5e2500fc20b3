"""the Aristotle tables: conquests and their analysis ratings

Revision ID: 0001
Revises:
Create Date: 2026-12-04 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aris_conquests",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=512), server_default="", nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("result", sa.String(length=32), nullable=False),
        sa.Column("result_notes", sa.Text(), server_default="", nullable=False),
        sa.Column("use_as_example", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("evaluated_by", sa.String(length=256), server_default="", nullable=False),
        sa.Column("evaluated_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.Column("philosopher", sa.String(length=320), server_default="", nullable=False),
        sa.Column("domain", sa.String(length=256), server_default="", nullable=False),
        sa.Column("prompt_json", sa.Text(), server_default="[]", nullable=False),
        sa.Column("response_json", sa.Text(), server_default="[]", nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=True),
        sa.Column("gold_sync_pending", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("problem", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("aris_conquests", schema=None) as batch_op:
        batch_op.create_index(
            "ix_aris_conquests_project_created", ["project", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_aris_conquests_project_batch", ["project", "batch_id"], unique=False
        )
        batch_op.create_index("ix_aris_conquests_pending", ["gold_sync_pending"], unique=False)

    op.create_table(
        "aris_ml_analysis_rating",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("conquest_id", sa.String(length=64), nullable=False),
        sa.Column("analysis_type", sa.String(length=64), server_default="", nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("feedback", sa.Text(), server_default="", nullable=False),
        sa.Column("is_gold_star", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "use_as_sample_response", sa.Boolean(), server_default=sa.false(), nullable=False
        ),
        sa.Column("include_in_training", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("philosopher", sa.String(length=320), server_default="", nullable=False),
        sa.Column("domain", sa.String(length=256), server_default="", nullable=False),
        sa.Column("ls_task_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("ls_annotation_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "rating IS NULL OR (rating >= 1 AND rating <= 5)", name="ck_aris_rating"
        ),
        sa.ForeignKeyConstraint(["conquest_id"], ["aris_conquests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ls_task_id", "conquest_id", name="uq_aris_rating_task_conquest"),
    )
    with op.batch_alter_table("aris_ml_analysis_rating", schema=None) as batch_op:
        batch_op.create_index("ix_aris_rating_conquest", ["conquest_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("aris_ml_analysis_rating", schema=None) as batch_op:
        batch_op.drop_index("ix_aris_rating_conquest")
    op.drop_table("aris_ml_analysis_rating")
    with op.batch_alter_table("aris_conquests", schema=None) as batch_op:
        batch_op.drop_index("ix_aris_conquests_pending")
        batch_op.drop_index("ix_aris_conquests_project_batch")
        batch_op.drop_index("ix_aris_conquests_project_created")
    op.drop_table("aris_conquests")
