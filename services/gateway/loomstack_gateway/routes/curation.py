"""`/v1/curation/...`: schemas, tasks, gold stars, statistics, imports and dataset snapshots,
over the curation service's gRPC API. A snapshot's content is its file, streamed from the
inference service's FileService (the same bytes `GET /v1/files/{id}/content` returns)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from loomstack.curation.v1 import curation_pb2
from loomstack.inference.v1 import files_pb2
from loomstack_kit.errors import NotFound
from loomstack_kit.list_page import page

from ..auth import caller_of
from ..direct_routes import direct
from ..request_fields import NonNegativeInt32, NonNegativeInt64, PositiveInt64, RequestBody
from ..responses import OrjsonResponse
from ..settings import GatewaySettings
from ..shapes.curation import (
    event_object,
    import_object,
    schema_object,
    snapshot_object,
    statistics_object,
    task_object,
)
from ..upstream import Curation, Inference, prefetched

_FORMATS = {
    "openai_chat": curation_pb2.SNAPSHOT_FORMAT_OPENAI_CHAT,
    "alpaca": curation_pb2.SNAPSHOT_FORMAT_ALPACA,
    "sharegpt": curation_pb2.SNAPSHOT_FORMAT_SHAREGPT,
    "chatml": curation_pb2.SNAPSHOT_FORMAT_CHATML,
}
_STATUSES = {
    "pending": curation_pb2.TASK_STATUS_PENDING,
    "imported": curation_pb2.TASK_STATUS_IMPORTED,
    "annotated": curation_pb2.TASK_STATUS_ANNOTATED,
}

# The label config as JSON (`format=json`) or as Label Studio's XML (`format=xml`).
_LABEL_CONFIG_DOC = {
    "description": "The Label Studio labeling config.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["object", "label_config"],
                "properties": {"object": {"type": "string"}, "label_config": {"type": "string"}},
            }
        },
        "application/xml": {"schema": {"type": "string"}},
    },
}
_SNAPSHOT_CONTENT_DOC = {
    "description": "The snapshot's training or validation file, one example a line.",
    "content": {"application/jsonl": {"schema": {"type": "string", "format": "binary"}}},
}


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


class SnapshotFilterBody(RequestBody):
    """Which annotated tasks a snapshot takes."""

    model_config = ConfigDict(extra="forbid")

    schema_id: str = ""
    schema_version: NonNegativeInt32 = 0
    gold_only: bool = False
    min_agreement: float = 0.0
    min_rating: NonNegativeInt32 = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    limit: NonNegativeInt32 = 0
    exclude_auto_accepted: bool = False


class CreateSnapshotBody(RequestBody):
    """POST /v1/curation/snapshots."""

    model_config = ConfigDict(extra="forbid")

    name: str
    filter: SnapshotFilterBody = SnapshotFilterBody()
    format: Literal["openai_chat", "alpaca", "sharegpt", "chatml"] = "openai_chat"
    validation_fraction: float = 0.0
    # A plugin's exporter (GET /v1/plugins lists them) and its options.
    exporter: str = ""
    exporter_options: dict[str, str] = Field(default_factory=dict)


class GoldBody(RequestBody):
    """POST /v1/curation/tasks/gold."""

    model_config = ConfigDict(extra="forbid")

    task_ids: list[PositiveInt64] = Field(min_length=1)
    gold: bool = True


def curation_router(
    inference: Inference, curation: Curation, settings: GatewaySettings
) -> APIRouter:
    """The curation routes, bound to the curation and inference services' clients."""
    router = APIRouter(prefix="/v1/curation", tags=["curation"])
    timeout = settings.upstream_timeout_seconds

    @router.get("/schemas", summary="List task schemas")
    @direct
    async def list_schemas(request: Request) -> Response:
        resp = await curation.schemas.ListSchemas(
            curation_pb2.ListSchemasRequest(page_size=1000),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            {
                "object": "list",
                "data": [schema_object(s) for s in resp.schemas],
                "problems": list(resp.problems),
            }
        )

    @router.get("/schemas/{schema_id}", summary="Retrieve a task schema")
    async def get_schema(
        request: Request, schema_id: str, version: NonNegativeInt32 = 0
    ) -> Response:
        resp = await curation.schemas.GetSchema(
            curation_pb2.GetSchemaRequest(schema_id=schema_id, version=version),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(schema_object(resp))

    @router.get(
        "/schemas/{schema_id}/label_config",
        summary="The Label Studio config",
        responses={200: _LABEL_CONFIG_DOC},
    )
    async def label_config(
        request: Request,
        schema_id: str,
        version: NonNegativeInt32 = 0,
        format: Literal["json", "xml"] = "json",
    ) -> Response:
        resp = await curation.schemas.RenderLabelConfig(
            curation_pb2.RenderLabelConfigRequest(schema_id=schema_id, version=version),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        if format == "xml":
            return Response(resp.label_config, media_type="application/xml")
        return OrjsonResponse(
            {"object": "curation.label_config", "label_config": resp.label_config}
        )

    @router.get("/schemas/{schema_id}/prompt", summary="The prompt and JSON schema")
    async def prompt(request: Request, schema_id: str, version: NonNegativeInt32 = 0) -> Response:
        resp = await curation.schemas.RenderPrompt(
            curation_pb2.RenderPromptRequest(schema_id=schema_id, version=version),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            {
                "object": "curation.prompt",
                "system_prompt": resp.system_prompt,
                "response_format": json.loads(resp.response_format_json or "null"),
                "json_schema": json.loads(resp.json_schema_json or "null"),
            }
        )

    @router.get("/tasks", summary="List curation tasks")
    async def list_tasks(
        request: Request,
        schema_id: str = "",
        status: Literal["", "pending", "imported", "annotated"] = "",
        gold_only: bool = False,
        batch_id: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: str = "",
    ) -> Response:
        resp = await curation.tasks.ListTasks(
            curation_pb2.ListTasksRequest(
                schema_id=schema_id,
                status=_STATUSES.get(status, curation_pb2.TASK_STATUS_UNSPECIFIED),
                gold_only=gold_only,
                batch_id=batch_id,
                page_size=limit,
                page_token=after,
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            {
                "object": "list",
                "data": [task_object(t) for t in resp.tasks],
                "has_more": bool(resp.next_page_token),
                "last_id": resp.next_page_token or None,
            }
        )

    @router.get("/events", summary="The curation feed: annotations, gold stars, snapshots")
    async def list_events(
        request: Request,
        after: Annotated[NonNegativeInt64, Query()] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        wait_seconds: Annotated[int, Query(ge=0, le=30)] = 0,
    ) -> Response:
        resp = await curation.events.ListEvents(
            curation_pb2.ListEventsRequest(
                after_sequence=after, page_size=limit, wait_seconds=wait_seconds
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout + wait_seconds,
        )
        events = [event_object(e) for e in resp.events]
        # Ask again with `after` = last_id: a full page may have more behind it.
        return OrjsonResponse(page(events, len(events) == limit, key="sequence"))

    async def _gold(request: Request, task_ids: list[int], gold: bool) -> Response:
        resp = await curation.tasks.SetTasksGold(
            curation_pb2.SetTasksGoldRequest(task_ids=task_ids, gold=gold),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse({"object": "list", "data": [task_object(t) for t in resp.tasks]})

    @router.post("/tasks/gold", summary="Gold-star (or un-star) several tasks")
    async def gold_many(request: Request, body: GoldBody) -> Response:
        return await _gold(request, body.task_ids, body.gold)

    @router.post("/tasks/{task_id}/gold", summary="Gold-star one task")
    async def gold_one(request: Request, task_id: PositiveInt64) -> Response:
        return await _gold(request, [task_id], True)

    @router.delete("/tasks/{task_id}/gold", summary="Take a task's gold star away")
    async def ungold_one(request: Request, task_id: PositiveInt64) -> Response:
        return await _gold(request, [task_id], False)

    @router.get("/stats", summary="Task, annotation, gold and agreement counts")
    async def stats(request: Request, schema_id: str = "") -> Response:
        resp = await curation.tasks.GetTaskStatistics(
            curation_pb2.GetTaskStatisticsRequest(schema_id=schema_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(statistics_object(resp))

    @router.get("/imports", summary="List batch imports")
    async def list_imports(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100, after: str = ""
    ) -> Response:
        resp = await curation.imports.ListImports(
            curation_pb2.ListImportsRequest(page_size=limit, page_token=after),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            {
                "object": "list",
                "data": [import_object(i) for i in resp.imports],
                "has_more": bool(resp.next_page_token),
                "next": resp.next_page_token or None,
            }
        )

    @router.get("/imports/{batch_id}", summary="The import of one batch")
    @direct
    async def get_import(request: Request, batch_id: str) -> Response:
        resp = await curation.imports.GetImport(
            curation_pb2.GetImportRequest(batch_id=batch_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(import_object(resp))

    @router.post("/snapshots", summary="Create a dataset snapshot")
    async def create_snapshot(request: Request, body: CreateSnapshotBody) -> Response:
        f = body.filter
        resp = await curation.snapshots.CreateSnapshot(
            curation_pb2.CreateSnapshotRequest(
                name=body.name,
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
                format=_FORMATS[body.format],
                validation_fraction=body.validation_fraction,
                exporter=body.exporter,
                exporter_options=body.exporter_options,
            ),
            metadata=caller_of(request).metadata,
            timeout=max(timeout, 300),
        )
        return OrjsonResponse(snapshot_object(resp))

    @router.get("/snapshots", summary="List dataset snapshots")
    async def list_snapshots(
        request: Request,
        name: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: str = "",
    ) -> Response:
        resp = await curation.snapshots.ListSnapshots(
            curation_pb2.ListSnapshotsRequest(name=name, page_size=limit, page_token=after),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            {
                "object": "list",
                "data": [snapshot_object(s) for s in resp.snapshots],
                "has_more": bool(resp.next_page_token),
                "next": resp.next_page_token or None,
            }
        )

    @router.get("/snapshots/{snapshot_id}", summary="Retrieve a dataset snapshot")
    @direct
    async def get_snapshot(request: Request, snapshot_id: str) -> Response:
        resp = await curation.snapshots.GetSnapshot(
            curation_pb2.GetSnapshotRequest(snapshot_id=snapshot_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(snapshot_object(resp))

    @router.get(
        "/snapshots/{snapshot_id}/content",
        summary="Download a snapshot's file",
        response_class=StreamingResponse,
        responses={200: _SNAPSHOT_CONTENT_DOC},
    )
    async def snapshot_content(
        request: Request,
        snapshot_id: str,
        split: Literal["train", "validation"] = "train",
    ) -> Response:
        metadata = caller_of(request).metadata
        snap = await curation.snapshots.GetSnapshot(
            curation_pb2.GetSnapshotRequest(snapshot_id=snapshot_id),
            metadata=metadata,
            timeout=timeout,
        )
        file_id = snap.training_file_id if split == "train" else snap.validation_file_id
        if not file_id:
            raise NotFound(f"snapshot {snapshot_id} has no {split} file", param="split")
        messages = await prefetched(
            inference.files.DownloadFileContent(
                files_pb2.DownloadFileContentRequest(file_id=file_id), metadata=metadata
            )
        )

        async def body() -> AsyncIterator[bytes]:
            async for msg in messages:
                yield msg.chunk

        name = f"{snap.name}-v{snap.version}-{split}.jsonl"
        return StreamingResponse(
            body(),
            media_type="application/jsonl",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    return router
