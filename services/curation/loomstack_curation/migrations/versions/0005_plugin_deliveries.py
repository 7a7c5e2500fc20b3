"""plugin result handlers: a cursor per handler and feed, and the events they failed on

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 19:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "curation_plugin_cursors",
        sa.Column("plugin", sa.String(length=32), nullable=False),
        sa.Column("handler", sa.String(length=128), nullable=False),
        sa.Column("feed", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("plugin", "handler", "feed", name="pk_curation_plugin_cursors"),
    )
    op.create_table(
        "curation_plugin_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("plugin", sa.String(length=32), nullable=False),
        sa.Column("handler", sa.String(length=128), nullable=False),
        sa.Column("feed", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("event_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), server_default="", nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.UniqueConstraint(
            "plugin", "handler", "feed", "sequence", name="uq_curation_plugin_deliveries_event"
        ),
    )
    op.create_index(
        "ix_curation_plugin_deliveries_due",
        "curation_plugin_deliveries",
        ["status", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_curation_plugin_deliveries_due", table_name="curation_plugin_deliveries")
    op.drop_table("curation_plugin_deliveries")
    op.drop_table("curation_plugin_cursors")
