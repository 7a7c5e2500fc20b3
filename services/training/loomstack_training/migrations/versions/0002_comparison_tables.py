"""comparison tables: on-demand A/B comparisons, their items and votes

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
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("model_a", sa.String(length=512), nullable=False),
        sa.Column("model_b", sa.String(length=512), nullable=False),
        sa.Column("input_file_id", sa.String(length=64), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("metadata_json", sa.Text(), server_default="{}", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("scored_item_count", sa.Integer(), nullable=False),
        sa.Column("exact_match_a", sa.Float(), nullable=True),
        sa.Column("token_overlap_a", sa.Float(), nullable=True),
        sa.Column("exact_match_b", sa.Float(), nullable=True),
        sa.Column("token_overlap_b", sa.Float(), nullable=True),
        sa.Column("error_json", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.create_index(
            "ix_comparisons_project_created", ["project", "created_at"], unique=False
        )
        batch_op.create_index("ix_comparisons_status", ["status"], unique=False)

    op.create_table(
        "comparison_items",
        sa.Column("comparison_id", sa.String(length=64), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("messages_json", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("answer_a", sa.Text(), nullable=True),
        sa.Column("answer_b", sa.Text(), nullable=True),
        sa.Column("error_a", sa.Text(), nullable=True),
        sa.Column("error_b", sa.Text(), nullable=True),
        sa.Column("exact_match_a", sa.Float(), nullable=True),
        sa.Column("token_overlap_a", sa.Float(), nullable=True),
        sa.Column("exact_match_b", sa.Float(), nullable=True),
        sa.Column("token_overlap_b", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("comparison_id", "item_index"),
    )
    op.create_table(
        "comparison_votes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("comparison_id", sa.String(length=64), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("winner", sa.String(length=8), nullable=False),
        sa.Column("voter", sa.String(length=128), server_default="", nullable=False),
        sa.Column("comment", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("comparison_votes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_comparison_votes_item", ["comparison_id", "item_index"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("comparison_votes", schema=None) as batch_op:
        batch_op.drop_index("ix_comparison_votes_item")

    op.drop_table("comparison_votes")
    op.drop_table("comparison_items")
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.drop_index("ix_comparisons_status")
        batch_op.drop_index("ix_comparisons_project_created")

    op.drop_table("comparisons")
