"""The gRPC clients of the services behind the gateway: one grpc.aio channel per upstream.

Channels are opened once, in the app's lifespan (they belong to the running event loop), and
shared by every request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loomstack.curation.v1 import curation_pb2_grpc, plugins_pb2_grpc
from loomstack.inference.v1 import (
    batches_pb2_grpc,
    chat_pb2_grpc,
    files_pb2_grpc,
    models_pb2_grpc,
)
from loomstack.training.v1 import training_pb2_grpc
from loomstack_kit.channels import open_aio_channel
from loomstack_kit.settings import ServiceSettings

if TYPE_CHECKING:
    from loomstack.curation.v1.curation_pb2_grpc import (
        EventServiceAsyncStub,
        ImportServiceAsyncStub,
        SchemaServiceAsyncStub,
        SnapshotServiceAsyncStub,
        TaskServiceAsyncStub,
    )
    from loomstack.curation.v1.plugins_pb2_grpc import PluginServiceAsyncStub
    from loomstack.inference.v1.batches_pb2_grpc import BatchServiceAsyncStub
    from loomstack.inference.v1.chat_pb2_grpc import ChatServiceAsyncStub
    from loomstack.inference.v1.files_pb2_grpc import FileServiceAsyncStub
    from loomstack.inference.v1.models_pb2_grpc import ModelServiceAsyncStub
    from loomstack.training.v1.training_pb2_grpc import (
        ComparisonServiceAsyncStub,
        FineTuningServiceAsyncStub,
    )

READINESS = "readiness"


class _Upstream:
    """What every upstream has: its channel, once open (plugins build their stubs on it)."""

    _channel: grpc.aio.Channel | None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The open channel (RuntimeError before the app started)."""
        if self._channel is None:
            raise RuntimeError("the upstream channel is not open yet")
        return self._channel


class Inference(_Upstream):
    """The inference service: files, batches, models and chat stubs on one channel."""

    files: FileServiceAsyncStub
    batches: BatchServiceAsyncStub
    models: ModelServiceAsyncStub
    chat: ChatServiceAsyncStub
    health: health_pb2_grpc.HealthStub

    def __init__(self, address: str, settings: ServiceSettings, *, max_message_bytes: int) -> None:
        self.address = address
        self.settings = settings
        self.max_message_bytes = max_message_bytes
        self._channel: grpc.aio.Channel | None = None

    async def open(self) -> None:
        """Opens the channel and builds the stubs."""
        self._channel = open_aio_channel(
            self.address,
            self.settings,
            max_message_bytes=self.max_message_bytes,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 0),
            ],
        )
        self.files = files_pb2_grpc.FileServiceStub(self._channel)
        self.batches = batches_pb2_grpc.BatchServiceStub(self._channel)
        self.models = models_pb2_grpc.ModelServiceStub(self._channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self._channel)
        self.health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        """Closes the channel, letting in-flight calls finish for a moment."""
        if self._channel is not None:
            await self._channel.close(grace=1.0)
            self._channel = None

    async def ready(self, deadline_seconds: float) -> tuple[bool, str]:
        """Whether the service's `readiness` health status is SERVING, and why not."""
        try:
            resp = await self.health.Check(
                health_pb2.HealthCheckRequest(service=READINESS), timeout=deadline_seconds
            )
        except grpc.aio.AioRpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            return False, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return True, "SERVING"


class Curation(_Upstream):
    """The curation service: schemas, tasks, imports and snapshots stubs on one channel."""

    schemas: SchemaServiceAsyncStub
    tasks: TaskServiceAsyncStub
    imports: ImportServiceAsyncStub
    snapshots: SnapshotServiceAsyncStub
    events: EventServiceAsyncStub
    plugins: PluginServiceAsyncStub

    def __init__(self, address: str, settings: ServiceSettings) -> None:
        self.address = address
        self.settings = settings
        self._channel: grpc.aio.Channel | None = None

    async def open(self) -> None:
        """Opens the channel and builds the stubs."""
        self._channel = open_aio_channel(self.address, self.settings)
        self.schemas = curation_pb2_grpc.SchemaServiceStub(self._channel)
        self.tasks = curation_pb2_grpc.TaskServiceStub(self._channel)
        self.imports = curation_pb2_grpc.ImportServiceStub(self._channel)
        self.snapshots = curation_pb2_grpc.SnapshotServiceStub(self._channel)
        self.events = curation_pb2_grpc.EventServiceStub(self._channel)
        self.plugins = plugins_pb2_grpc.PluginServiceStub(self._channel)

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close(grace=1.0)
            self._channel = None


class Training(_Upstream):
    """The training service: the fine-tuning jobs and comparisons stubs on one channel."""

    jobs: FineTuningServiceAsyncStub
    comparisons: ComparisonServiceAsyncStub

    def __init__(self, address: str, settings: ServiceSettings) -> None:
        self.address = address
        self.settings = settings
        self._channel: grpc.aio.Channel | None = None

    async def open(self) -> None:
        """Opens the channel and builds the stubs."""
        self._channel = open_aio_channel(self.address, self.settings)
        self.jobs = training_pb2_grpc.FineTuningServiceStub(self._channel)
        self.comparisons = training_pb2_grpc.ComparisonServiceStub(self._channel)

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close(grace=1.0)
            self._channel = None


async def prefetched(call: Any) -> AsyncIterator[Any]:
    """A server-streaming call whose first message (or error) has already arrived.

    Awaiting this before the HTTP response starts turns an upstream error (unknown file, no
    engine, bad parameters) into a proper HTTP status instead of a broken 200. The returned
    iterator yields every message and cancels the call when it is closed.
    """
    messages = aiter(call)
    try:
        first = await anext(messages, None)
    except BaseException:
        call.cancel()
        raise

    async def rest() -> AsyncIterator[Any]:
        try:
            if first is not None:
                yield first
            async for msg in messages:
                yield msg
        finally:
            call.cancel()

    return rest()
