"""Streams a multipart upload (`POST /v1/files`) into the client-streaming `UploadFile` RPC.

The body is parsed as it arrives (`MultipartStream`); each ~1 MiB chunk of the file part goes
into a small asyncio.Queue that the RPC's request iterator drains. A full queue makes the body
reader wait, so HTTP reading follows gRPC flow control and the gateway holds a few chunks at
most: never the file, never on disk. (The iterator style rather than `call.write()`: the
OpenTelemetry client interceptor awaits the end of a stream-unary call before handing it back,
which deadlocks the writer API.)

Field order. The RPC's first message needs the `purpose`, which is a separate form field:
- `purpose` before the file — what the official openai client (and httpx, which writes data
  fields before files) always sends: the RPC starts when the file part starts, nothing is held.
- `purpose` after the file (e.g. `curl -F file=@x -F purpose=batch`): the file bytes are held in
  memory until the field arrives, up to `upload_buffer_bytes` (16 MiB by default); past that
  the upload is refused with a 400 that says to send `purpose` first.

An upload that is rejected upstream, malformed or cut short cancels the RPC, so the inference
service discards the partial blob and records nothing. The error is answered at once: reading
what the client still sends is `BodyLimits`' job, which reads only a bounded remainder (so a
client sending a small rest reads the answer) and otherwise closes the connection, rather than
taking in the rest of a large refused file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from loomstack.inference.v1 import files_pb2
from loomstack_kit.errors import Internal, InvalidArgument

from .auth import Metadata
from .multipart_stream import FileChunk, FileEnd, FileStart, FormField, MultipartStream

if TYPE_CHECKING:
    from loomstack.inference.v1.files_pb2_grpc import FileServiceAsyncStub

FILE_FIELD = "file"
PURPOSE_FIELD = "purpose"
QUEUE_CHUNKS = 2
# grpc.aio replaces the status the server sent with this one when a write was still pending as
# the call ended (its `_write` calls `set_internal_error` after the real status arrived).
_LOST_STATUS = "Internal error from Core"


class _UpstreamEnded(Exception):
    """The RPC finished before the upload did (the service rejected it)."""


class FileUpload:
    """One upload in flight: the form's state and the RPC it feeds."""

    def __init__(
        self,
        stub: FileServiceAsyncStub,
        metadata: Metadata,
        *,
        buffer_bytes: int,
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.buffer_bytes = buffer_bytes
        self.purpose: str | None = None
        self.filename: str | None = None
        self.file_done = False
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)  # None: the end
        self._call: grpc.aio.StreamUnaryCall | None = None  # type: ignore[type-arg]
        self._result: asyncio.Future[files_pb2.File] | None = None
        self._held: list[bytes] = []
        self._held_bytes = 0

    async def run(self, body: AsyncIterator[bytes], form: MultipartStream) -> files_pb2.File:
        """Consumes the body; returns the stored file or raises the upstream / form error."""
        try:
            async for data in body:
                for event in form.feed(data):
                    await self._on_event(event)
            if not form.complete:
                raise InvalidArgument(
                    "the multipart body ended before its closing boundary",
                    param=FILE_FIELD,
                    code="invalid_multipart",
                )
            if self.filename is None or not self.file_done:
                raise InvalidArgument(
                    "missing the `file` part", param=FILE_FIELD, code="missing_file"
                )
            if self.purpose is None:
                raise InvalidArgument(
                    "missing the `purpose` field", param=PURPOSE_FIELD, code="missing_purpose"
                )
            if self._result is None:
                self._start()
            await self._put(None)
            return await self._outcome()
        except _UpstreamEnded:
            # The service answered early (bad purpose, too large): its error is the answer.
            await self._outcome()  # raises the service's error
            raise AssertionError("an upload RPC that ended early must have failed") from None
        except BaseException:
            self._cancel()
            raise

    async def _outcome(self) -> files_pb2.File:
        assert self._result is not None
        try:
            return await self._result
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _LOST_STATUS:
                raise Internal(
                    "the inference service refused the upload before it ended, and its reason "
                    "was lost in transit; check the purpose and the file size, then retry",
                    code="upload_refused",
                ) from exc
            raise

    async def _on_event(self, event: FormField | FileStart | FileChunk | FileEnd) -> None:
        if isinstance(event, FileChunk):
            if self._result is not None:
                await self._put(event.data)
            else:
                self._hold(event.data)
        elif isinstance(event, FileStart):
            if event.name != FILE_FIELD:
                raise InvalidArgument(
                    f"unexpected file part {event.name!r}; send the file as `file`",
                    param=event.name,
                )
            if self.filename is not None:
                raise InvalidArgument("only one `file` part is allowed", param=FILE_FIELD)
            self.filename = event.filename
            if self.purpose is not None:
                self._start()
        elif isinstance(event, FileEnd):
            self.file_done = True
        elif event.name == PURPOSE_FIELD:
            self.purpose = event.value
            if self.filename is not None and self._result is None:
                self._start()
                held, self._held, self._held_bytes = self._held, [], 0
                for data in held:
                    await self._put(data)

    def _hold(self, data: bytes) -> None:
        self._held_bytes += len(data)
        if self._held_bytes > self.buffer_bytes:
            raise InvalidArgument(
                "the `purpose` field must come before the `file` part for files over "
                f"{self.buffer_bytes // (1024 * 1024)} MiB "
                "(curl: -F purpose=batch -F file=@input.jsonl)",
                param=PURPOSE_FIELD,
                code="purpose_after_file",
            )
        self._held.append(data)

    def _start(self) -> None:
        assert self.purpose is not None and self.filename is not None
        first = files_pb2.UploadFileRequest(
            metadata=files_pb2.UploadFileMetadata(filename=self.filename, purpose=self.purpose)
        )
        call = self.stub.UploadFile(self._requests(first), metadata=self.metadata)
        self._call = call
        self._result = asyncio.ensure_future(_response_of(call))
        self._result.add_done_callback(_mark_retrieved)

    async def _requests(
        self, first: files_pb2.UploadFileRequest
    ) -> AsyncIterator[files_pb2.UploadFileRequest]:
        yield first
        while (chunk := await self._queue.get()) is not None:
            yield files_pb2.UploadFileRequest(chunk=chunk)

    async def _put(self, chunk: bytes | None) -> None:
        """Queues a chunk for the RPC, waiting while the queue is full, unless the RPC ends."""
        assert self._result is not None
        if self._result.done():
            raise _UpstreamEnded
        if not self._queue.full():
            self._queue.put_nowait(chunk)
            return
        put = asyncio.ensure_future(self._queue.put(chunk))
        await asyncio.wait((put, self._result), return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            raise _UpstreamEnded

    def _cancel(self) -> None:
        if self._call is not None and not self._call.done():
            self._call.cancel()


async def _response_of(call: grpc.aio.StreamUnaryCall) -> files_pb2.File:  # type: ignore[type-arg]
    result: files_pb2.File = await call
    return result


def _mark_retrieved(future: asyncio.Future[files_pb2.File]) -> None:
    # Marks the outcome as seen when nobody awaits it (a cancelled upload), so asyncio does not
    # log "exception was never retrieved".
    if not future.cancelled():
        future.exception()
