"""The training service's tables (it owns them; no other service reads them)."""

from __future__ import annotations

import sqlalchemy as sa

from loomstack_kit.blobstore import blob_chunks_table

metadata = sa.MetaData()
# The database blob store's table (adapters, checkpoints): named for this service, so that it
# never clashes with inference's `blob_chunks` when both share one PostgreSQL database.
blob_chunks = blob_chunks_table("training_blob_chunks")
blob_chunks.to_metadata(metadata)

jobs = sa.Table(
    "fine_tuning_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("base_model_path", sa.Text, nullable=False),
    sa.Column("training_file", sa.String(64), nullable=False),
    sa.Column("validation_file", sa.String(64), nullable=True),
    sa.Column("suffix", sa.String(64), nullable=False, server_default=""),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("hyperparameters_json", sa.Text, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("runner", sa.String(32), nullable=False),
    sa.Column("runner_ref", sa.String(256), nullable=True),
    sa.Column("fine_tuned_model", sa.String(512), nullable=True),
    sa.Column("trained_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("trained_steps", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total_steps", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("error_json", sa.Text, nullable=True),
    sa.Column("result_files_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("eval_json", sa.Text, nullable=True),
    sa.Column("adapter_blob_id", sa.String(128), nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("first_step_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Index("ix_fine_tuning_jobs_project_created", "project", "created_at"),
    sa.Index("ix_fine_tuning_jobs_status", "status"),
)

events = sa.Table(
    "fine_tuning_events",
    metadata,
    sa.Column("sequence", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("metrics_json", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_fine_tuning_events_job", "job_id", "sequence"),
)

checkpoints = sa.Table(
    "fine_tuning_checkpoints",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("metrics_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("blob_id", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("job_id", "step", name="uq_fine_tuning_checkpoints_job_step"),
)

# On-demand A/B comparisons of two models: the comparison, one item per prompt, the votes.
comparisons = sa.Table(
    "comparisons",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("model_a", sa.String(512), nullable=False),
    sa.Column("model_b", sa.String(512), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("max_tokens", sa.Integer, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("scored_item_count", sa.Integer, nullable=False),
    # Mean scores over the items with a reference, set on completion.
    sa.Column("exact_match_a", sa.Float, nullable=True),
    sa.Column("token_overlap_a", sa.Float, nullable=True),
    sa.Column("exact_match_b", sa.Float, nullable=True),
    sa.Column("token_overlap_b", sa.Float, nullable=True),
    sa.Column("error_json", sa.Text, nullable=True),
    # Runs started; a restart re-queues a comparison it interrupted until this reaches the limit.
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Index("ix_comparisons_project_created", "project", "created_at"),
    sa.Index("ix_comparisons_status", "status"),
)

comparison_items = sa.Table(
    "comparison_items",
    metadata,
    sa.Column("comparison_id", sa.String(64), primary_key=True),
    sa.Column("item_index", sa.Integer, primary_key=True),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("messages_json", sa.Text, nullable=False),
    sa.Column("reference", sa.Text, nullable=True),
    sa.Column("answer_a", sa.Text, nullable=True),
    sa.Column("answer_b", sa.Text, nullable=True),
    sa.Column("error_a", sa.Text, nullable=True),
    sa.Column("error_b", sa.Text, nullable=True),
    sa.Column("exact_match_a", sa.Float, nullable=True),
    sa.Column("token_overlap_a", sa.Float, nullable=True),
    sa.Column("exact_match_b", sa.Float, nullable=True),
    sa.Column("token_overlap_b", sa.Float, nullable=True),
)

comparison_votes = sa.Table(
    "comparison_votes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("comparison_id", sa.String(64), nullable=False),
    sa.Column("item_index", sa.Integer, nullable=False),
    sa.Column("winner", sa.String(8), nullable=False),
    sa.Column("voter", sa.String(128), nullable=False, server_default=""),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_comparison_votes_item", "comparison_id", "item_index"),
)
