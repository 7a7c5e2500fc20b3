"""The inference service as the curation service uses it: files, the batch event feed, chat.

Synchronous gRPC (the callers run in worker threads next to the Label Studio SDK, which is
synchronous too). Every call names the project it acts for. The channel, signing, error mapping
and the streamed file verbs are the kit's (`loomstack_kit.service_client`); this module keeps
curation's own verbs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from loomstack.inference.v1 import batches_pb2, batches_pb2_grpc, chat_pb2, chat_pb2_grpc
from loomstack_kit.service_client import InferenceFiles, ServiceClient
from loomstack_kit.settings import ServiceSettings

from .feed import BatchEvent

SERVICE = "curation"


class InferenceClient:
    """One channel to the inference service; every call is signed as the curation service
    acting for a project."""

    def __init__(self, address: str, settings: ServiceSettings) -> None:
        self.address = address
        self.rpc = ServiceClient(address, settings, SERVICE)
        self.files = InferenceFiles(self.rpc)
        self.batches = batches_pb2_grpc.BatchServiceStub(self.rpc.channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self.rpc.channel)

    def close(self) -> None:
        """Closes the channel."""
        self.rpc.close()

    def read_lines(self, project: str, file_id: str) -> Iterator[bytes]:
        """A JSONL file's non-blank lines, streamed as they arrive (flat memory)."""
        return self.files.lines(project, file_id)

    def read_file(self, project: str, file_id: str) -> bytes:
        """A file's whole content."""
        return self.files.read(project, file_id)

    def upload(
        self,
        project: str,
        filename: str,
        content: bytes | Iterable[bytes],
        purpose: str = "fine-tune",
    ) -> str:
        """Stores a file (bytes, or chunks as they are produced); returns its id."""
        return self.files.upload(project, filename, content, purpose)

    def batch_events(
        self, after: int, page_size: int = 100, wait_seconds: int = 0
    ) -> list[BatchEvent]:
        """The next events of the feed (admin view: every project's batches)."""
        reply = self.rpc.call(
            self.batches.ListBatchEvents,
            batches_pb2.ListBatchEventsRequest(
                after_sequence=after, page_size=page_size, wait_seconds=wait_seconds
            ),
            None,
            timeout=wait_seconds + 30,
        )
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
        reply = self.rpc.call(
            self.chat.CreateChatCompletion,
            chat_pb2.CreateChatCompletionRequest(request_json=json.dumps(request).encode()),
            project,
            timeout=timeout,
        )
        result: dict[str, Any] = json.loads(reply.response_json)
        return result
