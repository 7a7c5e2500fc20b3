"""The inference service as the training service uses it: files and the model registry.

Synchronous gRPC, called from worker threads. Every call names the project it acts for.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from loomstack.inference.v1 import files_pb2, files_pb2_grpc, models_pb2, models_pb2_grpc
from loomstack_kit.errors import InvalidArgument, NotFound, from_rpc_error
from loomstack_kit.identity import project_metadata

_MAX_MESSAGE = 64 * 1024 * 1024


@dataclass(frozen=True)
class BaseModel:
    """A base model as the registry records it."""

    id: str
    path: str
    max_model_len: int


class InferenceClient:
    """One channel to the inference service."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
            ],
        )
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)

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
                metadata=tuple(project_metadata(project)),
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
                metadata=tuple(project_metadata(project)),
                timeout=30,
            )
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFound):
                raise NotFound(f"no file {file_id!r} ({param})", param=param) from None
            raise error from None
        return str(reply.purpose)

    def base_model(self, project: str, model_id: str) -> BaseModel:
        """A registered base model (not an adapter), or InvalidArgument naming `model`."""
        try:
            reply = self.models.GetModel(
                models_pb2.GetModelRequest(model_id=model_id),
                metadata=tuple(project_metadata(project)),
                timeout=30,
            )
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFound):
                raise InvalidArgument(
                    f"unknown base model {model_id!r}: fine-tune one of the models "
                    "GET /v1/models lists",
                    code="model_not_found",
                    param="model",
                ) from None
            raise error from None
        if reply.parent:
            raise InvalidArgument(
                f"{model_id!r} is a fine-tuned model; fine-tune its base {reply.parent!r}",
                code="invalid_model",
                param="model",
            )
        return BaseModel(reply.id, reply.source, int(reply.max_model_len))
