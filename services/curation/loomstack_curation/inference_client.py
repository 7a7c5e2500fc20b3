"""The inference service as the curation service uses it: files, the batch event feed, chat.

Synchronous gRPC (the callers run in worker threads next to the Label Studio SDK, which is
synchronous too). Every call names the project it acts for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc

from loomstack.inference.v1 import (
    batches_pb2,
    batches_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
)
from loomstack_kit.channels import open_channel
from loomstack_kit.errors import from_rpc_error
from loomstack_kit.identity import IdentitySigner
from loomstack_kit.settings import ServiceSettings

from .feed import BatchEvent

CHUNK = 256 * 1024
SERVICE = "curation"


class InferenceClient:
    """One channel to the inference service; every call is signed as the curation service
    acting for a project."""

    def __init__(self, address: str, settings: ServiceSettings) -> None:
        self.address = address
        self.signer = IdentitySigner(settings.secret(), SERVICE)
        self.channel = open_channel(address, settings)
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.batches = batches_pb2_grpc.BatchServiceStub(self.channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self.channel)

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def read_file(self, project: str, file_id: str) -> bytes:
        """A file's whole content."""
        try:
            return b"".join(
                part.chunk
                for part in self.files.DownloadFileContent(
                    files_pb2.DownloadFileContentRequest(file_id=file_id),
                    metadata=self.signer.metadata(project),
                    timeout=300,
                )
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def upload(
        self, project: str, filename: str, content: bytes, purpose: str = "fine-tune"
    ) -> str:
        """Stores a file; returns its id."""

        def messages() -> Iterator[files_pb2.UploadFileRequest]:
            yield files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(filename=filename, purpose=purpose)
            )
            for start in range(0, len(content), CHUNK):
                yield files_pb2.UploadFileRequest(chunk=content[start : start + CHUNK])

        try:
            return str(
                self.files.UploadFile(
                    messages(), metadata=self.signer.metadata(project), timeout=300
                ).id
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def batch_events(
        self, after: int, page_size: int = 100, wait_seconds: int = 0
    ) -> list[BatchEvent]:
        """The next events of the feed (admin view: every project's batches)."""
        try:
            reply = self.batches.ListBatchEvents(
                batches_pb2.ListBatchEventsRequest(
                    after_sequence=after, page_size=page_size, wait_seconds=wait_seconds
                ),
                metadata=self.signer.metadata(None),
                timeout=wait_seconds + 30,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return [
            BatchEvent(
                sequence=e.sequence,
                type=e.type,
                batch_id=e.batch.id,
                project=e.batch.project,
                model=e.batch.model,
                input_file_id=e.batch.input_file_id,
                output_file_id=e.batch.output_file_id,
                failed_lines=e.batch.request_counts.failed,
                metadata=dict(e.batch.metadata),
            )
            for e in reply.events
        ]

    def chat_completion(
        self, project: str, request: dict[str, Any], timeout: float = 120
    ) -> dict[str, Any]:
        """One chat completion (OpenAI JSON in, OpenAI JSON out)."""
        try:
            reply = self.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(request_json=json.dumps(request).encode()),
                metadata=self.signer.metadata(project),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        result: dict[str, Any] = json.loads(reply.response_json)
        return result
