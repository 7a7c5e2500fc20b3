"""Curation protos → the curation objects of our API: schemas, tasks, task statistics, imports
and snapshots, built by plain functions like every other shape. Fields keep the proto's
snake_case names; enums are their value names in lower case without the enum's prefix;
timestamps are RFC 3339 strings (present only when set, as are the optional numbers); the
embedded JSON documents (`definition_json`, `data_json`, `manifest_json`) are decoded into
`definition`, `data` and `manifest`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf.message import Message

from loomstack.curation.v1 import curation_pb2


def _document(text: str) -> Any:
    return json.loads(text) if text else None


def _enum(enum_type: Any, value: int) -> str | int:
    """`TASK_STATUS_IMPORTED` → `imported`, `SNAPSHOT_FORMAT_OPENAI_CHAT` → `openai_chat`; a
    number the proto does not name stays a number."""
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return value
    return name.split("_STATUS_")[-1].split("_FORMAT_")[-1].lower()


def _double(value: float) -> float | str:
    """A double as proto JSON writes it (infinities and NaN as strings)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _times(msg: Message, body: dict[str, Any], *fields: str) -> dict[str, Any]:
    """Adds each Timestamp field that is set, as an RFC 3339 string."""
    for field in fields:
        if msg.HasField(field):
            body[field] = getattr(msg, field).ToJsonString()
    return body


def schema_object(s: curation_pb2.Schema) -> dict[str, Any]:
    return {
        "object": "curation.schema",
        "id": s.id,
        "version": s.version,
        "name": s.name,
        "description": s.description,
        "versions": list(s.versions),
        "source": s.source,
        "label_studio_project_id": s.label_studio_project_id,
        "definition": _document(s.definition_json),
    }


def task_object(t: curation_pb2.Task) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "curation.task",
        "id": t.id,
        "label_studio_project_id": t.label_studio_project_id,
        "schema_id": t.schema_id,
        "schema_version": t.schema_version,
        "batch_id": t.batch_id,
        "custom_id": t.custom_id,
        "status": _enum(curation_pb2.TaskStatus, t.status),
        "gold": t.gold,
        "annotation_count": t.annotation_count,
        "corrected": t.corrected,
        "auto_accepted": t.auto_accepted,
        "data": _document(t.data_json),
    }
    if t.HasField("agreement"):
        body["agreement"] = _double(t.agreement)
    if t.HasField("rating"):
        body["rating"] = t.rating
    return _times(t, body, "create_time", "annotate_time")


def _counts(s: curation_pb2.TaskStatistics | curation_pb2.SchemaTaskStatistics) -> dict[str, Any]:
    return {
        "tasks": s.tasks,
        "annotated": s.annotated,
        "gold": s.gold,
        "corrected": s.corrected,
        "multi_annotated": s.multi_annotated,
        "mean_agreement": _double(s.mean_agreement),
    }


def statistics_object(s: curation_pb2.TaskStatistics) -> dict[str, Any]:
    return {
        "object": "curation.statistics",
        **_counts(s),
        "schemas": [{"schema_id": x.schema_id, **_counts(x)} for x in s.schemas],
    }


def import_object(i: curation_pb2.Import) -> dict[str, Any]:
    body = {
        "object": "curation.import",
        "batch_id": i.batch_id,
        "schema_type": i.schema_type,
        "status": _enum(curation_pb2.ImportStatus, i.status),
        "attempts": i.attempts,
        "error": i.error,
        "result_lines": i.result_lines,
        "imported_tasks": i.imported_tasks,
        "skipped_lines": i.skipped_lines,
        "prediction_problems": i.prediction_problems,
        "label_studio_project_id": i.label_studio_project_id,
        "auto_accept": i.auto_accept,
        "auto_accepted_tasks": i.auto_accepted_tasks,
    }
    return _times(i, body, "next_attempt_time", "create_time", "update_time")


def _filter(f: curation_pb2.SnapshotFilter) -> dict[str, Any]:
    body = {
        "schema_id": f.schema_id,
        "schema_version": f.schema_version,
        "gold_only": f.gold_only,
        "min_agreement": _double(f.min_agreement),
        "min_rating": f.min_rating,
        "limit": f.limit,
        "exclude_auto_accepted": f.exclude_auto_accepted,
    }
    return _times(f, body, "start_time", "end_time")


def snapshot_object(s: curation_pb2.Snapshot) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "curation.snapshot",
        "id": s.id,
        "name": s.name,
        "version": s.version,
        "format": _enum(curation_pb2.SnapshotFormat, s.format),
        "validation_fraction": _double(s.validation_fraction),
        "training_file_id": s.training_file_id,
        "validation_file_id": s.validation_file_id,
        "training_examples": s.training_examples,
        "validation_examples": s.validation_examples,
        "duplicates_removed": s.duplicates_removed,
        "incomplete_skipped": s.incomplete_skipped,
        "project": s.project,
        "auto_accepted_examples": s.auto_accepted_examples,
        "manifest": _document(s.manifest_json),
        "exporter": s.exporter,
        "exporter_options": dict(s.exporter_options),
    }
    if s.HasField("filter"):
        body["filter"] = _filter(s.filter)
    return _times(s, body, "create_time")


def event_object(e: curation_pb2.CurationEvent) -> dict[str, Any]:
    """One event of the curation feed; `sequence` is the cursor (`after`)."""
    body: dict[str, Any] = {
        "object": "curation.event",
        "sequence": e.sequence,
        "type": e.type,
        "project": e.project,
        "data": _document(e.data_json),
    }
    return _times(e, body, "create_time")
