"""The inference service as the training service uses it: files, the model registry, batches.

Synchronous gRPC, called from worker threads. Every call names the project it acts for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson

from loomstack.inference.v1 import (
    batches_pb2,
    batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from loomstack_kit.archives import pack_directory
from loomstack_kit.channels import open_channel
from loomstack_kit.errors import InvalidArgument, NotFound, Unavailable, from_rpc_error
from loomstack_kit.identity import IdentitySigner
from loomstack_kit.settings import ServiceSettings

SERVICE = "training"
_CHUNK = 256 * 1024
_BATCH_FINAL = frozenset(
    {
        batches_pb2.BATCH_STATUS_COMPLETED,
        batches_pb2.BATCH_STATUS_FAILED,
        batches_pb2.BATCH_STATUS_EXPIRED,
        batches_pb2.BATCH_STATUS_CANCELLED,
    }
)


@dataclass(frozen=True)
class BaseModel:
    """A base model as the registry records it."""

    id: str
    path: str
    max_model_len: int


@dataclass(frozen=True)
class RegisteredModel:
    """Any model the registry records: a base model or an adapter (with its `parent`)."""

    id: str
    parent: str
    max_model_len: int


class InferenceClient:
    """One channel to the inference service; every call is signed as the training service
    acting for a project."""

    def __init__(self, address: str, settings: ServiceSettings) -> None:
        self.address = address
        self.signer = IdentitySigner(settings.secret(), SERVICE)
        self.channel = open_channel(address, settings)
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)
        self.batches = batches_pb2_grpc.BatchServiceStub(self.channel)

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def read_file(self, project: str, file_id: str, *, param: str, max_bytes: int) -> bytes:
        """A file's whole content; NotFound names the request field."""
        parts: list[bytes] = []
        size = 0
        try:
            for part in self.files.DownloadFileContent(
                files_pb2.DownloadFileContentRequest(file_id=file_id),
                metadata=self.signer.metadata(project),
                timeout=300,
            ):
                size += len(part.chunk)
                if size > max_bytes:
                    raise InvalidArgument(
                        f"{param} {file_id} is larger than {max_bytes} bytes", param=param
                    )
                parts.append(part.chunk)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFound):
                raise NotFound(f"no file {file_id!r} ({param})", param=param) from None
            raise error from None
        return b"".join(parts)

    def file_purpose(self, project: str, file_id: str, *, param: str) -> str:
        """The purpose a file was uploaded with."""
        try:
            reply = self.files.GetFile(
                files_pb2.GetFileRequest(file_id=file_id),
                metadata=self.signer.metadata(project),
                timeout=30,
            )
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFound):
                raise NotFound(f"no file {file_id!r} ({param})", param=param) from None
            raise error from None
        return str(reply.purpose)

    def _get_model(self, project: str, model_id: str, *, param: str, kind: str, verb: str) -> Any:
        try:
            return self.models.GetModel(
                models_pb2.GetModelRequest(model_id=model_id),
                metadata=self.signer.metadata(project),
                timeout=30,
            )
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFound):
                raise InvalidArgument(
                    f"unknown {kind} {model_id!r}: {verb} one of the models GET /v1/models lists",
                    code="model_not_found",
                    param=param,
                ) from None
            raise error from None

    def base_model(self, project: str, model_id: str) -> BaseModel:
        """A registered base model (not an adapter), or InvalidArgument naming `model`."""
        reply = self._get_model(
            project, model_id, param="model", kind="base model", verb="fine-tune"
        )
        if reply.parent:
            raise InvalidArgument(
                f"{model_id!r} is a fine-tuned model; fine-tune its base {reply.parent!r}",
                code="invalid_model",
                param="model",
            )
        return BaseModel(reply.id, reply.source, int(reply.max_model_len))

    def model(self, project: str, model_id: str, *, param: str) -> RegisteredModel:
        """Any registered model the project may use (base or adapter), or InvalidArgument
        naming `param`."""
        reply = self._get_model(project, model_id, param=param, kind="model", verb="use")
        return RegisteredModel(reply.id, reply.parent, int(reply.max_model_len))

    def ready_engines(self, project: str, model_id: str) -> int:
        """How many ready engines serve `model_id` now (0 for a model the registry lacks)."""
        try:
            reply = self.models.GetModel(
                models_pb2.GetModelRequest(model_id=model_id),
                metadata=self.signer.metadata(project),
                timeout=30,
            )
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFound):
                return 0
            raise error from None
        return int(reply.ready_engines)

    def register_adapter(self, project: str, model_id: str, *, parent: str, source: str) -> None:
        """Registers a trained adapter as a model the engines of `parent` serve."""
        try:
            self.models.CreateModel(
                models_pb2.CreateModelRequest(model_id=model_id, parent=parent, source=source),
                metadata=self.signer.metadata(project),
                timeout=30,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def upload_adapter(self, project: str, model_id: str, adapter_dir: Path) -> str:
        """Uploads the adapter directory as an archive (purpose `adapter`); returns its file id,
        the `source` to register it with: every engine fetches it from the blob store, so no
        volume has to be shared between the trainers and the engines."""
        return self.upload(
            project, f"{model_id.replace(':', '-')}.tar", pack_directory(adapter_dir), "adapter"
        )

    def delete_model(self, project: str, model_id: str) -> None:
        """Deletes a registered adapter; one that is already gone is fine."""
        try:
            self.models.DeleteModel(
                models_pb2.DeleteModelRequest(model_id=model_id),
                metadata=self.signer.metadata(project),
                timeout=30,
            )
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if not isinstance(error, NotFound):
                raise error from None

    def upload(self, project: str, filename: str, content: bytes, purpose: str) -> str:
        """Stores a file; returns its id."""

        def messages() -> Iterator[files_pb2.UploadFileRequest]:
            yield files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(filename=filename, purpose=purpose)
            )
            for start in range(0, len(content), _CHUNK):
                yield files_pb2.UploadFileRequest(chunk=content[start : start + _CHUNK])

        try:
            reply = self.files.UploadFile(
                messages(), metadata=self.signer.metadata(project), timeout=300
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return str(reply.id)

    def run_batch(
        self,
        project: str,
        lines: list[dict[str, Any]],
        *,
        timeout: float,
        purpose: str,
        poll: float = 1.0,
        stop: threading.Event | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Runs a chat batch to the end; returns each output or error line by custom_id.

        `stop` (set at shutdown) cancels the batch and raises Unavailable.
        """
        stop = stop or threading.Event()
        content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        file_id = self.upload(project, f"{purpose.replace(' ', '-')}.jsonl", content, "batch")
        meta = self.signer.metadata(project)
        try:
            batch = self.batches.CreateBatch(
                batches_pb2.CreateBatchRequest(
                    input_file_id=file_id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    metadata={"purpose": purpose},
                ),
                metadata=meta,
                timeout=120,
            )
            deadline = time.monotonic() + timeout
            while batch.status not in _BATCH_FINAL:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"{purpose} batch {batch.id} did not finish in {timeout:.0f}s"
                    )
                if stop.wait(poll):
                    self.batches.CancelBatch(
                        batches_pb2.CancelBatchRequest(batch_id=batch.id), metadata=meta, timeout=30
                    )
                    raise Unavailable(
                        f"{purpose} batch {batch.id} cancelled: the service is stopping"
                    )
                batch = self.batches.GetBatch(
                    batches_pb2.GetBatchRequest(batch_id=batch.id), metadata=meta, timeout=30
                )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if batch.status != batches_pb2.BATCH_STATUS_COMPLETED:
            raise Unavailable(
                f"{purpose} batch {batch.id} ended {batches_pb2.BatchStatus.Name(batch.status)}"
            )
        rows: dict[str, dict[str, Any]] = {}
        for result_file in (batch.error_file_id, batch.output_file_id):
            if not result_file:
                continue
            data = self.read_file(project, result_file, param="output_file_id", max_bytes=1 << 30)
            for line in data.splitlines():
                if line.strip():
                    row = orjson.loads(line)
                    rows[row["custom_id"]] = row
        return rows
