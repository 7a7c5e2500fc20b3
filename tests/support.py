"""Helpers the tests share: the inference service as a process (on service_processes.py, which
also gives wait_until and health_status, re-exported here), databases, signed identities."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
from service_processes import ServiceProcess, health_status, wait_until  # noqa: F401 — re-exported

from loomstack_inference.engine_processes import EngineProcess, engine_processes

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = os.environ.get(
    "LOOMSTACK_INFERENCE_MODEL_PATH", str(ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct")
)
MODEL_NAME = "SmolLM2-135M-Instruct"
PG_ADMIN_URL = os.environ.get("LOOMSTACK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# One service secret for the whole run: every process a test starts inherits it, and the tests'
# own gRPC clients sign with it as the gateway would.
SERVICE_SECRET = os.environ.setdefault("LOOMSTACK_SERVICE_SECRET", f"test-{uuid.uuid4().hex}")


def signed(project: str | None, service: str = "gateway") -> tuple[tuple[str, str | bytes], ...]:
    """Signed identity metadata for `project` (None = admin), as `service` sends it."""
    from loomstack_kit.identity import IdentitySigner

    return IdentitySigner(SERVICE_SECRET.encode(), service).metadata(project)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the machine's server; dropped afterwards."""
    name = f"loomstack_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class InferenceProcess(ServiceProcess):
    """A real `python -m loomstack_inference` process in its own process group."""

    package = "loomstack_inference"

    def __init__(
        self,
        home: Path,
        *,
        roles: str = "api,engine",
        env: dict[str, str] | None = None,
        name: str = "inference",
    ) -> None:
        self.port_file = home / f"{name}.port"
        super().__init__(
            home,
            name,
            {
                **os.environ,
                "LOOMSTACK_HOME": str(home),
                "LOOMSTACK_INFERENCE_ROLES": roles,
                "LOOMSTACK_INFERENCE_MODEL_PATH": MODEL_PATH,
                "LOOMSTACK_INFERENCE_PORT_FILE": str(self.port_file),
                "LOOMSTACK_INFERENCE_ENFORCE_EAGER": "true",
                "LOOMSTACK_INFERENCE_POLL_SECONDS": "0.3",
                "LOOMSTACK_INFERENCE_LOG_JSON": "true",
                "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
                # vLLM checks this share of the machine's memory is free at start; several
                # engines run at once in the tests, so each asks for little (the KV cache is
                # sized above).
                "LOOMSTACK_INFERENCE_ENGINE_ARGS": "--gpu-memory-utilization 0.15",
                **(env or {}),
            },
            {"grpc": self.port_file},
        )

    def kill9(self) -> list[EngineProcess]:  # type: ignore[override]
        """SIGKILL the service process alone, as `kill -9 <pid>` does; returns the engine
        processes it had (vLLM's EngineCore and Worker), which must die with it."""
        engines = engine_processes(self.home)
        super().kill9()
        return engines


@contextmanager
def api_only_inference(home: Path, name: str = "inference-api") -> Iterator[InferenceProcess]:
    """A real inference service with the api role only (files, batches, the event feed, the
    model registry; no engine ever serves a model), stopped afterwards."""
    process = InferenceProcess(home, roles="api", name=name).start().wait_ready(120)
    try:
        yield process
    finally:
        process.terminate()


def batch_line(custom_id: str, content: str, **body: object) -> dict[str, object]:
    """One batch input line for the default model."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], **body},
    }


class InferenceClient:
    """A small synchronous gRPC client for tests (the gateway has its own)."""

    def __init__(self, address: str, project: str = "default") -> None:
        from loomstack.inference.v1 import batches_pb2_grpc, chat_pb2_grpc, files_pb2_grpc

        self.channel = grpc.insecure_channel(address)
        self.project = project
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.batches = batches_pb2_grpc.BatchServiceStub(self.channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Signed afresh for each call (a signature is valid for minutes, a test may run longer)."""
        return signed(self.project)

    def upload(self, lines: list[dict[str, object]], purpose: str = "batch") -> str:
        import json

        from loomstack.inference.v1 import files_pb2

        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        messages = [
            files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(filename="in.jsonl", purpose=purpose)
            )
        ]
        messages += [
            files_pb2.UploadFileRequest(chunk=data[i : i + 65536])
            for i in range(0, len(data), 65536)
        ]
        return self.files.UploadFile(iter(messages), metadata=self.metadata).id

    def create_batch(self, lines: list[dict[str, object]], **kwargs: object):  # type: ignore[no-untyped-def]
        from loomstack.inference.v1 import batches_pb2

        file_id = self.upload(lines)
        return self.batches.CreateBatch(
            batches_pb2.CreateBatchRequest(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                **kwargs,
            ),
            metadata=self.metadata,
        )

    def get_batch(self, batch_id: str):  # type: ignore[no-untyped-def]
        from loomstack.inference.v1 import batches_pb2

        return self.batches.GetBatch(
            batches_pb2.GetBatchRequest(batch_id=batch_id), metadata=self.metadata, timeout=10
        )

    def status(self, batch_id: str) -> str:
        from loomstack.inference.v1 import batches_pb2

        return batches_pb2.BatchStatus.Name(self.get_batch(batch_id).status)

    def content(self, file_id: str) -> bytes:
        from loomstack.inference.v1 import files_pb2

        return b"".join(
            c.chunk
            for c in self.files.DownloadFileContent(
                files_pb2.DownloadFileContentRequest(file_id=file_id), metadata=self.metadata
            )
        )

    def close(self) -> None:
        self.channel.close()


def write_zero_adapter(directory: Path, rank: int = 8) -> Path:
    """A servable fine-tuned model for the default model that answers as the base does."""
    from loomstack_inference.blank_adapter import write_blank_adapter

    return write_blank_adapter(Path(MODEL_PATH), directory, rank=rank)
