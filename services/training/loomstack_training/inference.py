"""The inference service as the training service uses it: files, the model registry, batches.

Synchronous gRPC, called from worker threads. Every call names the project it acts for. The
channel, signing, error mapping and the streamed file verbs are the kit's
(`loomstack_kit.service_client`), batch results are read with the kit's reader
(`loomstack_kit.batch_output`); this module keeps training's own verbs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loomstack.inference.v1 import (
    batches_pb2,
    batches_pb2_grpc,
    files_pb2,
    models_pb2,
    models_pb2_grpc,
)
from loomstack_kit.archives import pack_directory
from loomstack_kit.batch_output import OutputLine, read_output
from loomstack_kit.errors import InvalidArgument, LoomstackError, NotFound, Unavailable
from loomstack_kit.service_client import InferenceFiles, ServiceClient
from loomstack_kit.settings import ServiceSettings

SERVICE = "training"
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
        self.rpc = ServiceClient(address, settings, SERVICE)
        self.files = InferenceFiles(self.rpc)
        self.models = models_pb2_grpc.ModelServiceStub(self.rpc.channel)
        self.batches = batches_pb2_grpc.BatchServiceStub(self.rpc.channel)

    def close(self) -> None:
        """Closes the channel."""
        self.rpc.close()

    def read_file(self, project: str, file_id: str, *, param: str, max_bytes: int) -> bytes:
        """A file's whole content; NotFound names the request field, and so does the
        InvalidArgument of a file past `max_bytes` (found as it streams in)."""
        return self.files.read(project, file_id, param=param, max_bytes=max_bytes)

    def file_purpose(self, project: str, file_id: str, *, param: str) -> str:
        """The purpose a file was uploaded with."""

        def named(error: LoomstackError) -> LoomstackError:
            if isinstance(error, NotFound):
                return NotFound(f"no file {file_id!r} ({param})", param=param)
            return error

        reply = self.rpc.call(
            self.files.stub.GetFile,
            files_pb2.GetFileRequest(file_id=file_id),
            project,
            timeout=30,
            on_error=named,
        )
        return str(reply.purpose)

    def _get_model(self, project: str, model_id: str, *, param: str, kind: str, verb: str) -> Any:
        def unknown(error: LoomstackError) -> LoomstackError:
            if isinstance(error, NotFound):
                return InvalidArgument(
                    f"unknown {kind} {model_id!r}: {verb} one of the models GET /v1/models lists",
                    code="model_not_found",
                    param=param,
                )
            return error

        return self.rpc.call(
            self.models.GetModel,
            models_pb2.GetModelRequest(model_id=model_id),
            project,
            timeout=30,
            on_error=unknown,
        )

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
        reply = self.rpc.call(
            self.models.GetModel,
            models_pb2.GetModelRequest(model_id=model_id),
            project,
            timeout=30,
            on_error=_none_if_not_found,
        )
        return 0 if reply is None else int(reply.ready_engines)

    def register_adapter(self, project: str, model_id: str, *, parent: str, source: str) -> None:
        """Registers a trained adapter as a model the engines of `parent` serve."""
        self.rpc.call(
            self.models.CreateModel,
            models_pb2.CreateModelRequest(model_id=model_id, parent=parent, source=source),
            project,
            timeout=30,
        )

    def upload_adapter(self, project: str, model_id: str, adapter_dir: Path) -> str:
        """Uploads the adapter directory as an archive (purpose `adapter`); returns its file id,
        the `source` to register it with: every engine fetches it from the blob store, so no
        volume has to be shared between the trainers and the engines."""
        return self.upload(
            project, f"{model_id.replace(':', '-')}.tar", pack_directory(adapter_dir), "adapter"
        )

    def delete_model(self, project: str, model_id: str) -> None:
        """Deletes a registered adapter; one that is already gone is fine."""
        self.rpc.call(
            self.models.DeleteModel,
            models_pb2.DeleteModelRequest(model_id=model_id),
            project,
            timeout=30,
            on_error=_none_if_not_found,
        )

    def upload(
        self, project: str, filename: str, content: bytes | Iterable[bytes], purpose: str
    ) -> str:
        """Stores a file (bytes, or chunks as they are produced); returns its id."""
        return self.files.upload(project, filename, content, purpose)

    def run_batch(
        self,
        project: str,
        lines: list[dict[str, Any]],
        *,
        timeout: float,
        purpose: str,
        poll: float = 1.0,
        stop: threading.Event | None = None,
    ) -> dict[str, OutputLine]:
        """Runs a chat batch to the end; returns each output or error line by custom_id.

        `stop` (set at shutdown) cancels the batch and raises Unavailable.
        """
        stop = stop or threading.Event()
        content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        file_id = self.upload(project, f"{purpose.replace(' ', '-')}.jsonl", content, "batch")
        batch = self.rpc.call(
            self.batches.CreateBatch,
            batches_pb2.CreateBatchRequest(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"purpose": purpose},
            ),
            project,
            timeout=120,
        )
        deadline = time.monotonic() + timeout
        while batch.status not in _BATCH_FINAL:
            if time.monotonic() > deadline:
                raise Unavailable(f"{purpose} batch {batch.id} did not finish in {timeout:.0f}s")
            if stop.wait(poll):
                self.rpc.call(
                    self.batches.CancelBatch,
                    batches_pb2.CancelBatchRequest(batch_id=batch.id),
                    project,
                    timeout=30,
                )
                raise Unavailable(f"{purpose} batch {batch.id} cancelled: the service is stopping")
            batch = self.rpc.call(
                self.batches.GetBatch,
                batches_pb2.GetBatchRequest(batch_id=batch.id),
                project,
                timeout=30,
            )
        if batch.status != batches_pb2.BATCH_STATUS_COMPLETED:
            raise Unavailable(
                f"{purpose} batch {batch.id} ended {batches_pb2.BatchStatus.Name(batch.status)}"
            )
        rows: dict[str, OutputLine] = {}
        for result_file in (batch.error_file_id, batch.output_file_id):
            if not result_file:
                continue
            streamed = self.files.lines(
                project, result_file, param="output_file_id", max_bytes=1 << 30
            )
            for row in read_output(streamed):
                rows[row.custom_id] = row
        return rows


def _none_if_not_found(error: LoomstackError) -> LoomstackError | None:
    return None if isinstance(error, NotFound) else error
