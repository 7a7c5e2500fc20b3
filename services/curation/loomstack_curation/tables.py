"""The curation service's tables (it owns them; no other service reads them)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# (Loomstack project, schema version) → Label Studio project. Kept here, so a restart never
# creates a second one; each Label Studio project holds one Loomstack project's tasks only.
projects = sa.Table(
    "curation_projects",
    metadata,
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("schema_key", sa.String(160), nullable=False),
    sa.Column("schema_id", sa.String(64), nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("ls_project_id", sa.BigInteger, nullable=False),
    sa.Column("title", sa.String(512), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("project", "schema_key", name="pk_curation_projects"),
    sa.UniqueConstraint("ls_project_id", name="uq_curation_projects_ls_project_id"),
)

# One row per imported batch result line. `ls_task_id` is NULL while the line's chunk is on its
# way to Label Studio: a row in that state after a crash is resolved against Label Studio.
tasks = sa.Table(
    "curation_tasks",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("custom_id", sa.String(512), nullable=False),
    sa.Column("schema_id", sa.String(64), nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("ls_project_id", sa.BigInteger, nullable=False),
    sa.Column("ls_task_id", sa.BigInteger, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("data_json", sa.Text, nullable=False),
    sa.Column("predicted_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("gold", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("annotation_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("agreement", sa.Float),
    sa.Column("rating", sa.Integer),
    sa.Column("corrected", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("annotation_id", sa.BigInteger),
    sa.Column("result_json", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("annotated_at", sa.Float),
    # Whether the annotation a training example uses was auto-accepted (auto_accept.py).
    sa.Column("auto_accepted", sa.Boolean, nullable=False, server_default=sa.false()),
    # The Label Studio project a copy of this task is being sent to (relocation.py); NULL
    # otherwise.
    sa.Column("moving_to", sa.BigInteger),
    sa.UniqueConstraint("batch_id", "custom_id", name="uq_curation_tasks_batch_custom_id"),
    sa.Index("ix_curation_tasks_project_schema", "project", "schema_id", "status"),
    sa.Index("ix_curation_tasks_ls_project", "ls_project_id"),
)

# Label Studio tasks to delete: the old copies of relocated tasks, until Label Studio has
# deleted them (relocation.py).
relocations = sa.Table(
    "curation_relocations",
    metadata,
    sa.Column("ls_task_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ls_project_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Every annotation Label Studio told us about (webhook or reconcile).
ls_annotations = sa.Table(
    "curation_annotations",
    metadata,
    sa.Column("ls_annotation_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ls_task_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("result_json", sa.Text, nullable=False),
    sa.Column("gold", sa.Boolean, nullable=False),
    sa.Column("rating", sa.Integer),
    sa.Column("was_cancelled", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # `auto-accept` for an annotation the importer made from the prediction; empty for one a
    # person made (or changed) in Label Studio.
    sa.Column("annotator", sa.String(64), nullable=False, server_default=""),
)

snapshots = sa.Table(
    "curation_snapshots",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("filter_json", sa.Text, nullable=False),
    sa.Column("validation_fraction", sa.Float, nullable=False),
    sa.Column("training_file_id", sa.String(64), nullable=False),
    sa.Column("validation_file_id", sa.String(64)),
    sa.Column("training_examples", sa.BigInteger, nullable=False),
    sa.Column("validation_examples", sa.BigInteger, nullable=False),
    sa.Column("duplicates_removed", sa.BigInteger, nullable=False),
    sa.Column("incomplete_skipped", sa.BigInteger, nullable=False),
    sa.Column("manifest_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("project", "name", "version", name="uq_curation_snapshots_version"),
)

# The curation event feed (events.py): annotations, gold stars and snapshots, in the order
# they committed. AUTOINCREMENT on SQLite too, so a sequence is never handed out twice.
events = sa.Table(
    "curation_events",
    metadata,
    sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("data_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_curation_events_project_sequence", "project", "sequence"),
    sqlite_autoincrement=True,
)

# Where each consumer of the inference service's batch event feed is.
feed_cursors = sa.Table(
    "curation_feed_cursors",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# The import queue: one row per finished batch with a schema_type.
imports = sa.Table(
    "curation_imports",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("schema_type", sa.String(160), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("output_file_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("error_code", sa.String(32), nullable=False, server_default=""),
    sa.Column("result_lines", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("imported_tasks", sa.BigInteger, nullable=False, server_default="0"),
    # Lines of the batch that failed (its error file); never imported.
    sa.Column("failed_lines", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped_lines", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("prediction_problems", sa.BigInteger, nullable=False, server_default="0"),
    # The batch asked for auto-accept (metadata.curation_auto_accept), and how many tasks got
    # their prediction as an accepted annotation.
    sa.Column("auto_accept", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("auto_accepted_tasks", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("ls_project_id", sa.BigInteger),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_curation_imports_due", "status", "next_attempt_at"),
)

# Where each plugin result handler is on each feed (plugin_deliveries.py).
plugin_cursors = sa.Table(
    "curation_plugin_cursors",
    metadata,
    sa.Column("plugin", sa.String(32), nullable=False),
    sa.Column("handler", sa.String(128), nullable=False),
    sa.Column("feed", sa.String(16), nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("plugin", "handler", "feed", name="pk_curation_plugin_cursors"),
)

# The events plugin handlers failed on: retried with backoff, then dead (plugin_deliveries.py).
plugin_deliveries = sa.Table(
    "curation_plugin_deliveries",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("plugin", sa.String(32), nullable=False),
    sa.Column("handler", sa.String(128), nullable=False),
    sa.Column("feed", sa.String(16), nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("event_json", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint(
        "plugin", "handler", "feed", "sequence", name="uq_curation_plugin_deliveries_event"
    ),
    sa.Index("ix_curation_plugin_deliveries_due", "status", "next_attempt_at"),
)
