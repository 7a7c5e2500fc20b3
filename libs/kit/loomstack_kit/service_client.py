"""A blocking client to a Loomstack service, and the file verbs every service shares.

`ServiceClient` is what a service uses to call another one from its worker threads: one channel
(options, mutual TLS and the tracing interceptors: `channels.py`), every call signed as the
calling service acting for a project (`identity.py`), and gRPC's `RpcError` turned into the
kit's errors in one place (`errors.from_rpc_error`), streams included. A service's own client
keeps only its verbs and builds on this.

`InferenceFiles` streams files both ways in chunks, so a file larger than one gRPC message (or
than the memory a caller wants to spend) passes through with flat memory: `upload` sends any
iterable of byte chunks, `chunks` and `lines` yield the content as it arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from loomstack.inference.v1 import files_pb2, files_pb2_grpc

from .channels import MAX_MESSAGE_BYTES, open_channel
from .errors import InvalidArgument, LoomstackError, NotFound, from_rpc_error
from .identity import IdentitySigner
from .settings import ServiceSettings

CHUNK = 256 * 1024

T = TypeVar("T")


class ServiceClient:
    """One blocking channel to `address`; calls signed as `service` acting for a project."""

    def __init__(
        self,
        address: str,
        settings: ServiceSettings,
        service: str,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
        self.signer = IdentitySigner(settings.secret(), service)
        self.channel = open_channel(address, settings, max_message_bytes=max_message_bytes)

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def call(
        self,
        method: Callable[..., T],
        request: Any,
        project: str | None,
        *,
        timeout: float,
        on_error: Callable[[LoomstackError], LoomstackError | None] | None = None,
    ) -> T:
        """`method(request)` as `project` (None: the admin view). A failure raises the kit's
        error; `on_error` may replace it (return another) or swallow it (return None, and the
        call returns None)."""
        try:
            return method(request, metadata=self.signer.metadata(project), timeout=timeout)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
        if on_error is not None:
            replaced = on_error(error)
            if replaced is None:
                return None  # type: ignore[return-value]
            error = replaced
        raise error from None

    def stream(
        self,
        method: Callable[..., Iterable[T]],
        request: Any,
        project: str | None,
        *,
        timeout: float,
    ) -> Iterator[T]:
        """The messages of a server-streaming call, as they arrive; failures (at the start or
        midway) raise the kit's error."""
        try:
            yield from method(request, metadata=self.signer.metadata(project), timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


class InferenceFiles:
    """The inference service's file store as another service uses it, streaming both ways."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client
        self.stub = files_pb2_grpc.FileServiceStub(client.channel)

    def upload(
        self,
        project: str,
        filename: str,
        content: bytes | Iterable[bytes],
        purpose: str,
        *,
        timeout: float = 300,
    ) -> str:
        """Stores a file (its bytes, or chunks of them as they are produced); returns its id."""

        def messages() -> Iterator[files_pb2.UploadFileRequest]:
            yield files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(filename=filename, purpose=purpose)
            )
            for piece in _pieces(content):
                yield files_pb2.UploadFileRequest(chunk=piece)

        reply = self.client.call(self.stub.UploadFile, messages(), project, timeout=timeout)
        return str(reply.id)

    def chunks(
        self,
        project: str,
        file_id: str,
        *,
        param: str | None = None,
        max_bytes: int | None = None,
        timeout: float = 300,
    ) -> Iterator[bytes]:
        """A file's content in the chunks the service sends. With `param`, an unknown file is
        NotFound naming that request field; past `max_bytes`, InvalidArgument naming it."""
        size = 0
        try:
            for part in self.client.stream(
                self.stub.DownloadFileContent,
                files_pb2.DownloadFileContentRequest(file_id=file_id),
                project,
                timeout=timeout,
            ):
                size += len(part.chunk)
                if max_bytes is not None and size > max_bytes:
                    raise InvalidArgument(
                        f"{param or 'file'} {file_id} is larger than {max_bytes} bytes",
                        param=param,
                    )
                yield part.chunk
        except NotFound:
            if param is None:
                raise
            raise NotFound(f"no file {file_id!r} ({param})", param=param) from None

    def lines(self, project: str, file_id: str, **kwargs: Any) -> Iterator[bytes]:
        """A JSONL file's lines (without their line ends, blank ones skipped), as they arrive:
        at most one chunk and one line are held at a time."""
        return split_lines(self.chunks(project, file_id, **kwargs))

    def read(self, project: str, file_id: str, **kwargs: Any) -> bytes:
        """A file's whole content (for files bounded by `max_bytes`)."""
        return b"".join(self.chunks(project, file_id, **kwargs))


def _pieces(content: bytes | Iterable[bytes]) -> Iterator[bytes]:
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]
        return
    for piece in content:
        for start in range(0, len(piece), CHUNK):
            yield bytes(piece[start : start + CHUNK])


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of a stream of byte chunks, split where `bytes.splitlines` splits
    (`\\n`, `\\r\\n`, `\\r`); a line is held only until its end arrives."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            if pending:
                pending.append(piece)
                piece = b"".join(pending)
                pending = []
            yield from _nonblank(piece)
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield from _nonblank(b"".join(pending))


def _nonblank(line: bytes) -> Iterator[bytes]:
    for piece in line.split(b"\r") if b"\r" in line else (line,):
        if piece.strip():
            yield piece
