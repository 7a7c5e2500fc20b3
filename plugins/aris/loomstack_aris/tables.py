"""The Aristotle database's tables (the plugin's own; migrations/ creates them, version table
`alembic_version_aris`). Only conquests.py queries them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One conquest: a task a person asked the model to do for a project, its batch, and the
# verdict. `gold_sync_pending` is true from a VICTORY set through the API until the batch's
# Label Studio tasks carry the gold star; `problem` is the last thing a result handler could
# not make sense of (bad batch metadata), empty when none.
conquests = sa.Table(
    "aris_conquests",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("title", sa.String(512), nullable=False, server_default=""),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("result", sa.String(32), nullable=False),
    sa.Column("result_notes", sa.Text, nullable=False, server_default=""),
    sa.Column("use_as_example", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("evaluated_by", sa.String(256), nullable=False, server_default=""),
    sa.Column("evaluated_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("philosopher", sa.String(320), nullable=False, server_default=""),
    sa.Column("domain", sa.String(256), nullable=False, server_default=""),
    sa.Column("prompt_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("response_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("batch_id", sa.String(64)),
    sa.Column("gold_sync_pending", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("problem", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_aris_conquests_project_created", "project", "created_at", "id"),
    sa.Index("ix_aris_conquests_project_batch", "project", "batch_id"),
    sa.Index("ix_aris_conquests_pending", "gold_sync_pending"),
)

# A person's rating of a conquest's analysis: one row per (Label Studio task, conquest);
# `ls_task_id` 0 is the rating given through the API, tied to no Label Studio task.
ratings = sa.Table(
    "aris_ml_analysis_rating",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column(
        "conquest_id",
        sa.String(64),
        sa.ForeignKey("aris_conquests.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("analysis_type", sa.String(64), nullable=False, server_default=""),
    sa.Column("rating", sa.Integer),
    sa.Column("feedback", sa.Text, nullable=False, server_default=""),
    sa.Column("is_gold_star", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("use_as_sample_response", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("include_in_training", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("philosopher", sa.String(320), nullable=False, server_default=""),
    sa.Column("domain", sa.String(256), nullable=False, server_default=""),
    sa.Column("ls_task_id", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("ls_annotation_id", sa.BigInteger),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("ls_task_id", "conquest_id", name="uq_aris_rating_task_conquest"),
    sa.CheckConstraint("rating IS NULL OR (rating >= 1 AND rating <= 5)", name="ck_aris_rating"),
    sa.Index("ix_aris_rating_conquest", "conquest_id"),
)
