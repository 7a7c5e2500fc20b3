"""The inference service's tables (it owns them; no other service reads them)."""

from __future__ import annotations

import sqlalchemy as sa

from loomstack_kit.blobstore import blob_chunks

metadata = sa.MetaData()
# The database blob store's table lives in this service's database and migrations.
blob_chunks.to_metadata(metadata)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("line_count", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("blob_id", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_files_project_created", "project", "created_at"),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("completion_window", sa.String(16), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("errors_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("output_file_id", sa.String(64)),
    sa.Column("error_file_id", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("in_progress_at", sa.Float),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("finalizing_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("failed_at", sa.Float),
    sa.Column("expired_at", sa.Float),
    sa.Column("cancelling_at", sa.Float),
    sa.Column("cancelled_at", sa.Float),
    sa.Index("ix_batches_project_created", "project", "created_at"),
    sa.Index("ix_batches_status", "status"),
)

# One row per input line: engines never read files, they read these rows.
batch_requests = sa.Table(
    "batch_requests",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("custom_id", sa.String(512), nullable=False),
    sa.Column("body_json", sa.Text, nullable=False),
)

# Leases are taken on shards (ranges of lines), so one batch spreads over every engine of its
# model and a crash re-runs at most the uncommitted part of one shard.
shards = sa.Table(
    "shards",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("start_line", sa.Integer, nullable=False),
    sa.Column("end_line", sa.Integer, nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("batch_created_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("batch_id", "seq", name="uq_shards_batch_seq"),
    sa.Index("ix_shards_claim", "status", "model", "priority", "batch_created_at"),
)

# UNIQUE(batch_id, custom_id): re-running a line after a crash cannot produce a second output.
results = sa.Table(
    "results",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("custom_id", sa.String(512), nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("input_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("runner", sa.String(128), nullable=False),
    sa.Column("line_json", sa.Text, nullable=False),
    sa.UniqueConstraint("batch_id", "custom_id", name="uq_results_batch_custom_id"),
)

# The feed of finished batches other services consume with a cursor (at-least-once).
batch_events = sa.Table(
    "batch_events",
    metadata,
    sa.Column("sequence", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("parent", sa.String(256)),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("owned_by", sa.String(128), nullable=False),
    sa.Column("max_model_len", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
)

engines = sa.Table(
    "engines",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("address", sa.String(256), nullable=False),
    sa.Column("models_json", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("ready", sa.Boolean, nullable=False),
    sa.Column("output_tokens_per_second", sa.Float, nullable=False, server_default="0"),
    sa.Column("requests_per_second", sa.Float, nullable=False, server_default="0"),
)
