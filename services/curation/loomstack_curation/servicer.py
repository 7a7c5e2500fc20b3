"""gRPC servicers: convert protos to domain calls and back, nothing more: each RPC checks its
request's fields, makes one domain call and converts the typed result with a `*_to_proto`
function (no database rows here)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from loomstack.curation.v1 import curation_pb2, curation_pb2_grpc
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.identity import owner_project, project_of
from loomstack_kit.plugins import FeedEvent

from . import field_checks as check
from .catalog import SchemaCatalog
from .events import MAX_WAIT_SECONDS, CurationEvents
from .import_records import ImportRecords, ImportView
from .label_config import label_config
from .projects import ProjectMap
from .prompts import render_prompt, response_format, response_json_schema
from .snapshots import FORMATS, SnapshotFilter, SnapshotRecord, SnapshotStore, Upload
from .task_schema import TaskSchema
from .tasks import Statistics, TaskFilter, TaskQueries, TaskView

_TASK_STATUS = {
    "pending": curation_pb2.TASK_STATUS_PENDING,
    "imported": curation_pb2.TASK_STATUS_IMPORTED,
    "annotated": curation_pb2.TASK_STATUS_ANNOTATED,
}
_TASK_STATUS_NAME: dict[int, str] = {int(v): k for k, v in _TASK_STATUS.items()}
_IMPORT_STATUS = {
    "queued": curation_pb2.IMPORT_STATUS_QUEUED,
    "running": curation_pb2.IMPORT_STATUS_RUNNING,
    "completed": curation_pb2.IMPORT_STATUS_COMPLETED,
    "failed": curation_pb2.IMPORT_STATUS_FAILED,
}
_FORMAT = {
    "openai_chat": curation_pb2.SNAPSHOT_FORMAT_OPENAI_CHAT,
    "alpaca": curation_pb2.SNAPSHOT_FORMAT_ALPACA,
    "sharegpt": curation_pb2.SNAPSHOT_FORMAT_SHAREGPT,
    "chatml": curation_pb2.SNAPSHOT_FORMAT_CHATML,
}
_FORMAT_NAME: dict[int, str] = {int(v): k for k, v in _FORMAT.items()}
assert set(_FORMAT) == set(FORMATS)


def _ts(seconds: float | None) -> Timestamp | None:
    if not seconds:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def schema_to_proto(
    schema: TaskSchema, catalog: SchemaCatalog, projects: ProjectMap, project: str
) -> Any:
    """A schema as its proto, with the caller's project's Label Studio project."""
    registry = catalog.registry
    return curation_pb2.Schema(
        id=schema.id,
        version=schema.version,
        name=schema.name,
        description=schema.description,
        versions=[s.version for s in registry.versions(schema.id)],
        definition_json=schema.model_dump_json(by_alias=True),
        source=registry.source(schema).name,
        label_studio_project_id=projects.lookup(project, schema) or 0,
    )


class SchemaServicer(curation_pb2_grpc.SchemaServiceServicer):
    """Schemas and their renderings."""

    def __init__(self, catalog: SchemaCatalog, projects: ProjectMap) -> None:
        self.catalog = catalog
        self.projects = projects

    def _schema(self, schema_id: str, version: int) -> TaskSchema:
        if not schema_id:
            raise InvalidArgument("schema_id is required", param="schema_id")
        check.text(schema_id, "schema_id")
        return self.catalog.get(schema_id, check.non_negative(version, "version") or None)

    async def ListSchemas(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.to_thread(self.catalog.refresh)
        limit = check.page_size(request.page_size)
        after = check.text(request.page_token, "page_token")
        schemas = [s for s in self.catalog.registry.latest() if s.id > after]
        page = schemas[:limit]
        project = owner_project(project_of(context))
        messages = await asyncio.to_thread(
            lambda: [schema_to_proto(s, self.catalog, self.projects, project) for s in page]
        )
        return curation_pb2.ListSchemasResponse(
            schemas=messages,
            next_page_token=page[-1].id if len(schemas) > limit else "",
            problems=self.catalog.registry.problems,
        )

    async def GetSchema(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        schema = self._schema(request.schema_id, request.version)
        project = owner_project(project_of(context))
        return await asyncio.to_thread(
            schema_to_proto, schema, self.catalog, self.projects, project
        )

    async def RenderLabelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        schema = self._schema(request.schema_id, request.version)
        return curation_pb2.RenderLabelConfigResponse(label_config=label_config(schema))

    async def RenderPrompt(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        schema = self._schema(request.schema_id, request.version)
        fmt = response_format(schema)
        return curation_pb2.RenderPromptResponse(
            system_prompt=render_prompt(schema),
            response_format_json=json.dumps(fmt) if fmt else "",
            json_schema_json=json.dumps(response_json_schema(schema)) if fmt else "",
        )


def task_to_proto(row: TaskView) -> Any:
    """A task as its proto."""
    message = curation_pb2.Task(
        id=row.ls_task_id or 0,
        label_studio_project_id=row.ls_project_id,
        schema_id=row.schema_id,
        schema_version=row.schema_version,
        batch_id=row.batch_id,
        custom_id=row.custom_id,
        status=_TASK_STATUS.get(row.status, curation_pb2.TASK_STATUS_UNSPECIFIED),
        gold=row.gold,
        annotation_count=row.annotation_count,
        corrected=row.corrected,
        data_json=row.data_json,
        create_time=_ts(row.created_at),
        annotate_time=_ts(row.annotated_at),
        auto_accepted=row.auto_accepted,
    )
    if row.agreement is not None:
        message.agreement = row.agreement
    if row.rating is not None:
        message.rating = row.rating
    return message


def _stats_fields(s: Statistics) -> dict[str, Any]:
    return {
        "tasks": s.tasks,
        "annotated": s.annotated,
        "gold": s.gold,
        "corrected": s.corrected,
        "multi_annotated": s.multi_annotated,
        "mean_agreement": s.mean_agreement,
    }


class TaskServicer(curation_pb2_grpc.TaskServiceServicer):
    """Tasks, gold stars and statistics."""

    def __init__(self, queries: TaskQueries) -> None:
        self.queries = queries

    async def ListTasks(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        limit = check.page_size(request.page_size)
        flt = TaskFilter(
            schema_id=check.text(request.schema_id, "schema_id"),
            status=check.enum(request.status, _TASK_STATUS_NAME, "status", ""),
            gold_only=request.gold_only,
            batch_id=check.text(request.batch_id, "batch_id"),
        )
        rows = await asyncio.to_thread(
            self.queries.list_tasks,
            project_of(context),
            flt,
            limit + 1,
            check.number_token(request.page_token),
        )
        page = rows[:limit]
        return curation_pb2.ListTasksResponse(
            tasks=[task_to_proto(r) for r in page],
            next_page_token=str(page[-1].id) if len(rows) > limit else "",
        )

    async def SetTasksGold(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        task_ids = check.ids(list(request.task_ids), "task_ids")
        rows = await asyncio.to_thread(
            self.queries.set_gold, project_of(context), task_ids, request.gold
        )
        return curation_pb2.SetTasksGoldResponse(tasks=[task_to_proto(r) for r in rows])

    async def GetTaskStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        schema_id = check.text(request.schema_id, "schema_id")
        total, per_schema = await asyncio.to_thread(
            self.queries.statistics_report, project_of(context), schema_id
        )
        return curation_pb2.TaskStatistics(
            **_stats_fields(total),
            schemas=[]
            if request.schema_id
            else [
                curation_pb2.SchemaTaskStatistics(schema_id=s.schema_id, **_stats_fields(s))
                for s in per_schema
            ],
        )


def import_to_proto(row: ImportView) -> Any:
    """An import as its proto."""
    return curation_pb2.Import(
        batch_id=row.batch_id,
        schema_type=row.schema_type,
        status=_IMPORT_STATUS.get(row.status, curation_pb2.IMPORT_STATUS_UNSPECIFIED),
        attempts=row.attempts,
        error=row.error,
        result_lines=row.result_lines,
        imported_tasks=row.imported_tasks,
        skipped_lines=row.skipped_lines,
        prediction_problems=row.prediction_problems,
        label_studio_project_id=row.ls_project_id or 0,
        next_attempt_time=_ts(row.next_attempt_at) if row.status == "queued" else None,
        create_time=_ts(row.created_at),
        update_time=_ts(row.updated_at),
        auto_accept=row.auto_accept,
        auto_accepted_tasks=row.auto_accepted_tasks,
    )


class ImportServicer(curation_pb2_grpc.ImportServiceServicer):
    """The import queue, read-only."""

    def __init__(self, records: ImportRecords) -> None:
        self.records = records

    async def ListImports(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        limit = check.page_size(request.page_size)
        offset = check.number_token(request.page_token)
        rows = await asyncio.to_thread(self.records.page, project_of(context), limit + 1, offset)
        return curation_pb2.ListImportsResponse(
            imports=[import_to_proto(r) for r in rows[:limit]],
            next_page_token=str(offset + limit) if len(rows) > limit else "",
        )

    async def GetImport(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        batch_id = check.text(request.batch_id, "batch_id")
        row = await asyncio.to_thread(self.records.get, project_of(context), batch_id)
        return import_to_proto(row)


def snapshot_to_proto(record: SnapshotRecord) -> Any:
    """A snapshot as its proto."""
    f = record.filter
    return curation_pb2.Snapshot(
        id=record.id,
        name=record.name,
        version=record.version,
        format=_FORMAT[record.format],
        filter=curation_pb2.SnapshotFilter(
            schema_id=f.schema_id,
            schema_version=f.schema_version,
            gold_only=f.gold_only,
            min_agreement=f.min_agreement,
            min_rating=f.min_rating,
            start_time=_ts(f.start_time),
            end_time=_ts(f.end_time),
            limit=f.limit,
            exclude_auto_accepted=f.exclude_auto_accepted,
        ),
        validation_fraction=record.validation_fraction,
        training_file_id=record.training_file_id,
        validation_file_id=record.validation_file_id or "",
        training_examples=record.training_examples,
        validation_examples=record.validation_examples,
        duplicates_removed=record.duplicates_removed,
        incomplete_skipped=record.incomplete_skipped,
        manifest_json=json.dumps(record.manifest),
        create_time=_ts(record.created_at),
        project=record.project,
        auto_accepted_examples=int(record.manifest.get("counts", {}).get("auto_accepted", 0)),
        exporter=record.exporter,
        exporter_options=record.exporter_options,
    )


class SnapshotServicer(curation_pb2_grpc.SnapshotServiceServicer):
    """Dataset snapshots."""

    def __init__(self, store: SnapshotStore, upload: Upload) -> None:
        self.store = store
        self.upload = upload

    async def CreateSnapshot(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        f = request.filter
        flt = SnapshotFilter(
            schema_id=check.text(f.schema_id, "filter.schema_id"),
            schema_version=f.schema_version,
            gold_only=f.gold_only,
            min_agreement=f.min_agreement,
            min_rating=f.min_rating,
            start_time=check.timestamp(f.start_time, "filter.start_time"),
            end_time=check.timestamp(f.end_time, "filter.end_time"),
            limit=f.limit,
            exclude_auto_accepted=f.exclude_auto_accepted,
        )
        fmt = check.enum(request.format, _FORMAT_NAME, "format", "openai_chat")
        record = await asyncio.to_thread(
            self.store.create,
            owner_project(project_of(context)),
            request.name,
            flt,
            fmt=fmt,
            validation_fraction=request.validation_fraction,
            upload=self.upload,
            exporter=check.text(request.exporter, "exporter"),
            exporter_options={
                check.text(k, "exporter_options"): check.text(v, f"exporter_options.{k}")
                for k, v in request.exporter_options.items()
            },
        )
        return snapshot_to_proto(record)

    async def GetSnapshot(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        snapshot_id = check.text(request.snapshot_id, "snapshot_id")
        record = await asyncio.to_thread(self.store.get, project_of(context), snapshot_id)
        return snapshot_to_proto(record)

    async def ListSnapshots(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        limit = check.page_size(request.page_size)
        offset = check.number_token(request.page_token)
        name = check.text(request.name, "name")
        records = await asyncio.to_thread(
            self.store.list_snapshots, project_of(context), name, limit + 1, offset
        )
        return curation_pb2.ListSnapshotsResponse(
            snapshots=[snapshot_to_proto(r) for r in records[:limit]],
            next_page_token=str(offset + limit) if len(records) > limit else "",
        )


def event_to_proto(event: FeedEvent) -> Any:
    """A curation event as its proto."""
    return curation_pb2.CurationEvent(
        sequence=event.sequence,
        type=event.type,
        project=event.project,
        data_json=json.dumps(event.data, sort_keys=True, ensure_ascii=False),
        create_time=_ts(event.created_at),
    )


class EventServicer(curation_pb2_grpc.EventServiceServicer):
    """The curation event feed: a project reads its own events (an admin caller every one)."""

    def __init__(self, events: CurationEvents) -> None:
        self.events = events

    async def ListEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        limit = check.page_size(request.page_size)
        after = check.non_negative(request.after_sequence, "after_sequence")
        wait = min(check.non_negative(request.wait_seconds, "wait_seconds"), MAX_WAIT_SECONDS)
        events = await self.events.wait(project_of(context), after, limit, wait)
        return curation_pb2.ListEventsResponse(events=[event_to_proto(e) for e in events])
