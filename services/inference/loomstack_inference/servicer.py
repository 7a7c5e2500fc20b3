"""gRPC servicers: convert protos to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from loomstack.common.v1 import common_pb2
from loomstack.inference.v1 import (
    batches_pb2,
    batches_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from loomstack_kit.channels import open_aio_channel
from loomstack_kit.errors import InvalidArgument, NotFound, Unavailable, from_rpc_error
from loomstack_kit.identity import (
    IdentitySigner,
    calling_service,
    forwarded,
    owner_project,
    project_of,
)
from loomstack_kit.settings import ServiceSettings

from .adapters import is_file_source
from .batches import Batches, BatchView
from .engine import EngineRequestError, VllmEngine
from .files import ADAPTER_PURPOSE, FileRecord, FileStore
from .metrics import InferenceMetrics
from .registry import ModelInfo, Registry
from .statuses import TERMINAL, BatchStatus

# Every state a stored batch can be in (statuses.py); the proto's VALIDATING and FAILED are
# OpenAI's, which this service never reaches.
_STATUS: dict[str, batches_pb2.BatchStatus.ValueType] = {
    BatchStatus.IN_PROGRESS: batches_pb2.BATCH_STATUS_IN_PROGRESS,
    BatchStatus.FINALIZING: batches_pb2.BATCH_STATUS_FINALIZING,
    BatchStatus.COMPLETED: batches_pb2.BATCH_STATUS_COMPLETED,
    BatchStatus.EXPIRED: batches_pb2.BATCH_STATUS_EXPIRED,
    BatchStatus.CANCELLING: batches_pb2.BATCH_STATUS_CANCELLING,
    BatchStatus.CANCELLED: batches_pb2.BATCH_STATUS_CANCELLED,
}
assert set(_STATUS) == set(BatchStatus)
_TIME_FIELDS = {
    "created_at": "create_time",
    "in_progress_at": "in_progress_time",
    "expires_at": "expire_time",
    "finalizing_at": "finalizing_time",
    "completed_at": "complete_time",
    "failed_at": "fail_time",
    "expired_at": "expired_time",
    "cancelling_at": "cancelling_time",
    "cancelled_at": "cancelled_time",
}


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def file_to_proto(rec: FileRecord) -> files_pb2.File:
    """Domain file → proto."""
    return files_pb2.File(
        id=rec.id,
        bytes=rec.bytes,
        create_time=_ts(rec.created_at),
        filename=rec.filename,
        purpose=rec.purpose,
        project=rec.project,
        line_count=rec.line_count,
        sha256=rec.sha256,
    )


def batch_to_proto(view: BatchView) -> batches_pb2.Batch:
    """Domain batch → proto."""
    msg = batches_pb2.Batch(
        id=view.id,
        endpoint=view.endpoint,
        input_file_id=view.input_file_id,
        completion_window=view.completion_window,
        status=_STATUS[view.status],
        output_file_id=view.output_file_id or "",
        error_file_id=view.error_file_id or "",
        request_counts=batches_pb2.RequestCounts(
            total=view.total, completed=view.completed, failed=view.failed
        ),
        usage=batches_pb2.Usage(
            input_tokens=view.input_tokens,
            cached_tokens=view.cached_tokens,
            output_tokens=view.output_tokens,
            total_tokens=view.input_tokens + view.output_tokens,
        ),
        metadata=view.metadata,
        model=view.model,
        priority=view.priority,
        project=view.project,
        queue_position=view.queue_position,
        errors=[common_pb2.LineError(**e) for e in view.errors],  # type: ignore[arg-type]
    )
    for column, name in _TIME_FIELDS.items():
        value = view.times.get(column)
        if value is not None:
            getattr(msg, name).CopyFrom(_ts(value))
    if view.estimated_start_at is not None:
        msg.estimated_start_time.CopyFrom(_ts(view.estimated_start_at))
    if view.estimated_finish_at is not None:
        msg.estimated_finish_time.CopyFrom(_ts(view.estimated_finish_at))
    return msg


def model_to_proto(info: ModelInfo) -> models_pb2.Model:
    """Domain model → proto."""
    return models_pb2.Model(
        id=info.id,
        create_time=_ts(info.created_at),
        owned_by=info.owned_by,
        parent=info.parent or "",
        source=info.source,
        max_model_len=info.max_model_len,
        ready_engines=info.ready_engines,
        throughput_tokens_per_second=info.output_tokens_per_second,
    )


class FileServicer(files_pb2_grpc.FileServiceServicer):
    """Files over gRPC."""

    def __init__(self, store: FileStore, chunk_bytes: int = 1024 * 1024) -> None:
        self.store = store
        self.chunk_bytes = chunk_bytes

    async def UploadFile(
        self, request_iterator: AsyncIterator[files_pb2.UploadFileRequest], context: Any
    ) -> files_pb2.File:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("metadata"):
            raise InvalidArgument(
                "the first upload message must carry the file metadata", param="file"
            )
        meta = first.metadata

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in request_iterator:
                yield msg.chunk

        try:
            rec = await self.store.upload(
                owner_project(project_of(context)),
                meta.filename,
                meta.purpose,
                chunks(),
                system=calling_service(context) is not None,
            )
        except Exception:
            # Read the rest of the stream before failing: aborting while the client still
            # writes makes grpc.aio replace our status with INTERNAL "Internal error from Core".
            async for _ in request_iterator:
                pass
            raise
        return file_to_proto(rec)

    async def GetFile(self, request: files_pb2.GetFileRequest, context: Any) -> files_pb2.File:
        rec = await asyncio.to_thread(self.store.get, project_of(context), request.file_id)
        return file_to_proto(rec)

    async def ListFiles(
        self, request: files_pb2.ListFilesRequest, context: Any
    ) -> files_pb2.ListFilesResponse:
        limit = min(request.page_size or 100, 10_000)
        page, more = await asyncio.to_thread(
            self.store.list_files, project_of(context), request.purpose, limit, request.page_token
        )
        return files_pb2.ListFilesResponse(
            files=[file_to_proto(r) for r in page], next_page_token=page[-1].id if more else ""
        )

    async def DeleteFile(
        self, request: files_pb2.DeleteFileRequest, context: Any
    ) -> files_pb2.DeleteFileResponse:
        await asyncio.to_thread(self.store.delete, project_of(context), request.file_id)
        return files_pb2.DeleteFileResponse(id=request.file_id, deleted=True)

    async def DownloadFileContent(
        self, request: files_pb2.DownloadFileContentRequest, context: Any
    ) -> AsyncIterator[files_pb2.DownloadFileContentResponse]:
        chunks = await asyncio.to_thread(self.store.read, project_of(context), request.file_id)
        iterator = iter(chunks)
        while True:
            chunk = await asyncio.to_thread(next, iterator, None)
            if chunk is None:
                return
            yield files_pb2.DownloadFileContentResponse(chunk=chunk)


class BatchServicer(batches_pb2_grpc.BatchServiceServicer):
    """Batches over gRPC."""

    def __init__(self, batches: Batches, watch_seconds: float = 0.5) -> None:
        self.batches = batches
        self.watch_seconds = watch_seconds

    async def CreateBatch(
        self, request: batches_pb2.CreateBatchRequest, context: Any
    ) -> batches_pb2.Batch:
        view = await asyncio.to_thread(
            self.batches.create,
            owner_project(project_of(context)),
            input_file_id=request.input_file_id,
            endpoint=request.endpoint,
            completion_window=request.completion_window,
            metadata=dict(request.metadata),
            priority=request.priority,
        )
        return batch_to_proto(view)

    async def GetBatch(
        self, request: batches_pb2.GetBatchRequest, context: Any
    ) -> batches_pb2.Batch:
        view = await asyncio.to_thread(self.batches.get, project_of(context), request.batch_id)
        return batch_to_proto(view)

    async def ListBatches(
        self, request: batches_pb2.ListBatchesRequest, context: Any
    ) -> batches_pb2.ListBatchesResponse:
        limit = min(request.page_size or 20, 100)
        page, more = await asyncio.to_thread(
            self.batches.list_batches, project_of(context), limit, request.page_token
        )
        return batches_pb2.ListBatchesResponse(
            batches=[batch_to_proto(v) for v in page], next_page_token=page[-1].id if more else ""
        )

    async def CancelBatch(
        self, request: batches_pb2.CancelBatchRequest, context: Any
    ) -> batches_pb2.Batch:
        view = await asyncio.to_thread(self.batches.cancel, project_of(context), request.batch_id)
        return batch_to_proto(view)

    async def ListBatchEvents(
        self, request: batches_pb2.ListBatchEventsRequest, context: Any
    ) -> batches_pb2.ListBatchEventsResponse:
        limit = min(request.page_size or 100, 1000)
        project = project_of(context)
        deadline = asyncio.get_running_loop().time() + min(max(request.wait_seconds, 0), 30)
        while True:
            events = await asyncio.to_thread(
                self.batches.events, request.after_sequence, limit, project
            )
            if events or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(self.watch_seconds)
        return batches_pb2.ListBatchEventsResponse(
            events=[
                batches_pb2.BatchEvent(
                    sequence=seq, type=kind, batch=batch_to_proto(view), create_time=_ts(at)
                )
                for seq, kind, at, view in events
            ]
        )

    async def WatchBatch(
        self, request: batches_pb2.WatchBatchRequest, context: Any
    ) -> AsyncIterator[batches_pb2.Batch]:
        project = project_of(context)
        last = None
        while True:
            view = await asyncio.to_thread(self.batches.get, project, request.batch_id)
            msg = batch_to_proto(view)
            key = (msg.status, msg.request_counts.completed, msg.request_counts.failed)
            if key != last:
                last = key
                yield msg
            if view.status in TERMINAL:
                return
            await asyncio.sleep(self.watch_seconds)


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    """The model registry over gRPC."""

    def __init__(self, registry: Registry, files: FileStore | None = None) -> None:
        self.registry = registry
        self.files = files

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: Any
    ) -> models_pb2.ListModelsResponse:
        infos = await asyncio.to_thread(self.registry.list_models, project_of(context))
        return models_pb2.ListModelsResponse(models=[model_to_proto(i) for i in infos])

    async def GetModel(self, request: models_pb2.GetModelRequest, context: Any) -> models_pb2.Model:
        info = await asyncio.to_thread(
            self.registry.get_model, request.model_id, project_of(context)
        )
        return model_to_proto(info)

    async def CreateModel(
        self, request: models_pb2.CreateModelRequest, context: Any
    ) -> models_pb2.Model:
        if not request.model_id or not request.source:
            raise InvalidArgument("model_id and source are required", param="model_id")
        project = project_of(context)
        parent = await asyncio.to_thread(self.registry.get_model, request.parent, project, "parent")
        if is_file_source(request.source) and self.files is not None:
            # The caller's own file: an adapter archive of another project is not a source.
            record = await asyncio.to_thread(self.files.get, project, request.source)
            if record.purpose != ADAPTER_PURPOSE:
                raise InvalidArgument(
                    f"file {request.source!r} has purpose {record.purpose!r}; an adapter "
                    f"source file has purpose {ADAPTER_PURPOSE!r}",
                    param="source",
                )
        if parent.parent:
            raise InvalidArgument(
                f"{request.parent!r} is an adapter; an adapter's parent must be a base model",
                param="parent",
            )
        await asyncio.to_thread(
            self.registry.register_adapter,
            request.model_id,
            request.source,
            parent.max_model_len,
            parent=parent.id,
            owned_by=owner_project(project),
        )
        info = await asyncio.to_thread(self.registry.get_model, request.model_id, project)
        return model_to_proto(info)

    async def DeleteModel(
        self, request: models_pb2.DeleteModelRequest, context: Any
    ) -> models_pb2.DeleteModelResponse:
        await asyncio.to_thread(self.registry.delete_model, request.model_id, project_of(context))
        return models_pb2.DeleteModelResponse(model_id=request.model_id, deleted=True)


def _engine_error(exc: EngineRequestError) -> InvalidArgument | NotFound | Unavailable:
    err = exc.error
    message = str(err.get("message") or "request rejected by the engine")
    code = str(err.get("code") or "invalid_request")
    param = err.get("param")
    if exc.status_code == 404:
        return NotFound(message, code=code, param=param)
    if exc.status_code >= 500:
        return Unavailable(message, code=code, param=param)
    return InvalidArgument(message, code=code, param=param)


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Online chat: on the local engine when it serves the model, else forwarded to an engine
    of that model found in the registry (so an api-only replica can take every request)."""

    def __init__(
        self,
        engine: VllmEngine | None,
        ready: Any,
        registry: Registry,
        *,
        settings: ServiceSettings,
        signer: IdentitySigner,
        metrics: InferenceMetrics,
        max_online_requests: int = 64,
        engine_tls_server_name: str = "",
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.ready = ready
        self.registry = registry
        self.settings = settings
        self.signer = signer
        self.max_online_requests = max_online_requests
        self.engine_tls_server_name = engine_tls_server_name
        self._online = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._next = 0

    @contextlib.contextmanager
    def _online_slot(self) -> Iterator[None]:
        """One of the engine's online slots, or Unavailable at once when all are taken: a full
        engine answers "retry shortly" instead of queueing without bound (batch lines have
        slots of their own in the runner)."""
        if self._online >= self.max_online_requests:
            self.metrics.online_refused.inc()
            raise Unavailable(
                f"the engine is answering {self.max_online_requests} online requests already; "
                "retry shortly",
                code="engine_overloaded",
                retry_after=1.0,
            )
        self._online += 1
        self.metrics.online_inflight.inc()
        try:
            yield
        finally:
            self._online -= 1
            self.metrics.online_inflight.dec()

    @staticmethod
    def _model(request_json: bytes) -> str:
        try:
            body = orjson.loads(request_json)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise InvalidArgument("model is required", param="model", code="missing_model")
        # The request is JSON in a bytes field, which the kit's NUL check (request_text.py)
        # does not read; the registry's lookup would fail on PostgreSQL with it.
        if "\x00" in model:
            raise InvalidArgument("model must not contain NUL characters", param="model")
        return model

    def _local(self, model: str) -> VllmEngine | None:
        if self.engine is not None and self.engine.serves(model) and self.ready():
            return self.engine
        return None

    async def _remote(self, model: str) -> chat_pb2_grpc.ChatServiceStub:
        addresses = await asyncio.to_thread(self.registry.engine_addresses, model)
        if self.engine is not None and self.engine.served_name == model:
            raise Unavailable(
                f"the engine for {model!r} is still loading; retry shortly", code="engine_not_ready"
            )
        if not addresses:
            raise Unavailable(
                f"no engine is serving model {model!r} right now; retry shortly",
                code="engine_not_ready",
            )
        self._next += 1
        address = addresses[self._next % len(addresses)]
        if address not in self._channels:
            self._channels[address] = open_aio_channel(
                address, self.settings, server_name=self.engine_tls_server_name
            )
        return chat_pb2_grpc.ChatServiceStub(self._channels[address])

    async def _route(self, request_json: bytes, context: Any) -> VllmEngine | None:
        """The local engine for the request's model, or None to forward it; NotFound for a
        model the caller may not use (another project's adapter reads as unknown)."""
        model = self._model(request_json)
        # The local engine's own model is a base model, which every project may use.
        if self.engine is None or model != self.engine.served_name:
            await asyncio.to_thread(self.registry.check_visible, model, project_of(context))
        return self._local(model)

    async def CreateChatCompletion(
        self, request: chat_pb2.CreateChatCompletionRequest, context: Any
    ) -> chat_pb2.CreateChatCompletionResponse:
        engine = await self._route(request.request_json, context)
        if engine is None:
            stub = await self._remote(self._model(request.request_json))
            try:
                return await stub.CreateChatCompletion(  # type: ignore[misc]
                    request,
                    timeout=context.time_remaining(),
                    metadata=forwarded(self.signer, context),
                )
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from exc
        with self._online_slot():
            try:
                body = await engine.chat_completion(request.request_json)
            except EngineRequestError as exc:
                raise _engine_error(exc) from exc
        return chat_pb2.CreateChatCompletionResponse(response_json=body)

    async def StreamChatCompletion(
        self, request: chat_pb2.StreamChatCompletionRequest, context: Any
    ) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        engine = await self._route(request.request_json, context)
        if engine is None:
            stub = await self._remote(self._model(request.request_json))
            try:
                async for chunk in stub.StreamChatCompletion(  # type: ignore[attr-defined]
                    request, metadata=forwarded(self.signer, context)
                ):
                    yield chunk
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from exc
            return
        with self._online_slot():
            try:
                async for piece in engine.stream_chat_completion(request.request_json):
                    yield chat_pb2.StreamChatCompletionResponse(chunk_json=piece)
            except EngineRequestError as exc:
                raise _engine_error(exc) from exc
