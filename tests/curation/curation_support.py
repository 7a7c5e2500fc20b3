"""Helpers of the curation service tests: batch result lines, the service's domain objects on
one database, and a real curation service process."""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from label_studio_sdk.client import LabelStudio
from service_processes import ServiceProcess
from support import MODEL_NAME, wait_until

from loomstack_curation.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_curation.annotations import AnnotationStore
from loomstack_curation.batch_results import BatchResults, read_results
from loomstack_curation.catalog import SchemaCatalog
from loomstack_curation.import_queue import ImportQueue, QueuedImport
from loomstack_curation.importer import Importer
from loomstack_curation.projects import ProjectMap
from loomstack_curation.snapshots import SnapshotStore
from loomstack_curation.tasks import TaskQueries
from loomstack_inference.batches import Batches
from loomstack_inference.files import FileStore
from loomstack_inference.leases import LeaseQueue, ResultRow
from loomstack_kit.blobstore import FilesystemBlobStore
from loomstack_kit.database import create_db_engine, migrate, write_transaction

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = ["Billing", "Technical issue", "Account access", "Feature request", "Other"]
URGENCIES = ["Low", "Medium", "High", "Critical"]


def ticket(i: int) -> str:
    return f"Ticket {i}: my invoice #{i} is wrong"


def input_line(custom_id: str, prompt: str, model: str = "SmolLM2-135M-Instruct") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}]},
    }


def output_line(custom_id: str, content: str | None) -> dict[str, Any]:
    """A batch output line as the inference service writes it; None content = a failed line."""
    if content is None:
        return {
            "id": f"batch_req_{custom_id}",
            "custom_id": custom_id,
            "response": {"status_code": 400, "request_id": f"req_{custom_id}", "body": {}},
            "error": {"code": "invalid_request", "message": "max_tokens is too large"},
        }
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"req_{custom_id}",
            "body": {
                "id": f"chatcmpl-{custom_id}",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            },
        },
        "error": None,
    }


def ticket_answer(i: int) -> str:
    return json.dumps({"category": CATEGORIES[i % 5], "urgency": URGENCIES[i % 4]})


def ticket_lines(
    n: int, failed_every: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(input lines, output lines) of a classify_ticket batch of n lines; every
    `failed_every`-th line failed."""
    inputs, outputs = [], []
    for i in range(n):
        cid = f"t{i}"
        inputs.append(input_line(cid, ticket(i)))
        failed = failed_every and i % failed_every == failed_every - 1
        outputs.append(output_line(cid, None if failed else ticket_answer(i)))
    return inputs, outputs


def jsonl(lines: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(x).encode() for x in lines]


@dataclass
class Curation:
    """The curation service's domain objects on one database."""

    url: str
    engine: Any
    schemas_dir: Path
    catalog: SchemaCatalog
    projects: ProjectMap
    imports: ImportQueue
    importer: Importer
    annotations: AnnotationStore
    queries: TaskQueries
    snapshots: SnapshotStore

    def queue(
        self,
        batch_id: str,
        schema_type: str = "classify_ticket",
        project: str = "p1",
        auto_accept: bool = False,
    ) -> QueuedImport:
        with write_transaction(self.engine) as conn:
            self.imports.enqueue(
                conn,
                batch_id=batch_id,
                project=project,
                schema_type=schema_type,
                model="smollm2-test",
                input_file_id="file-in",
                output_file_id="file-out",
                auto_accept=auto_accept,
            )
        return QueuedImport(
            batch_id, project, schema_type, "smollm2-test", "file-in", "file-out", auto_accept
        )

    def run(self, item: QueuedImport, results: BatchResults) -> str:
        return self.importer.attempt(item, lambda _item: results)

    def import_tickets(
        self,
        batch_id: str,
        n: int,
        failed_every: int = 0,
        project: str = "p1",
        auto_accept: bool = False,
    ) -> str:
        inputs, outputs = ticket_lines(n, failed_every)
        item = self.queue(batch_id, project=project, auto_accept=auto_accept)
        return self.run(item, read_results(jsonl(inputs), jsonl(outputs)))


QUEUE_ARGS = ("retry_base", "retry_max", "allow_auto_accept")


def make_curation(url: str, client: LabelStudio | None, tmp_path: Path, **args: Any) -> Curation:
    """The domain objects on `url`; `args` go to the import queue (retry_base, retry_max,
    allow_auto_accept) or the importer (chunk_size, send, after_chunk)."""
    migrate(url, MIGRATIONS, VERSION_TABLE)
    schemas = tmp_path / "schemas"
    if not schemas.exists():
        shutil.copytree(REPO / "schemas", schemas)
    engine = create_db_engine(url)
    catalog = SchemaCatalog(schemas)
    # A fresh title prefix per test: the session's one Label Studio serves every test.
    projects = ProjectMap(engine, client, title_prefix=f"t-{uuid.uuid4().hex[:8]} ")
    imports = ImportQueue(engine, catalog, **{k: v for k, v in args.items() if k in QUEUE_ARGS})
    importer = Importer(
        engine,
        catalog,
        projects,
        imports,
        **{k: v for k, v in args.items() if k not in QUEUE_ARGS},
    )
    annotations = AnnotationStore(engine, catalog)
    return Curation(
        url,
        engine,
        schemas,
        catalog,
        projects,
        imports,
        importer,
        annotations,
        TaskQueries(engine, catalog, projects, annotations),
        SnapshotStore(engine, catalog),
    )


class Crash(Exception):
    """Stands for the process dying at that point."""


def crashing_send(send: Any, crash_on: int) -> Any:
    """The real send of tasks to Label Studio, except that the n-th call dies right after Label
    Studio has stored the tasks (before their ids could be recorded)."""
    calls = []

    def send_then_crash(client: LabelStudio, project_id: int, tasks: list[Any]) -> list[int]:
        calls.append(1)
        ids: list[int] = send(client, project_id, tasks)
        if len(calls) == crash_on:
            raise Crash("killed after Label Studio stored the chunk")
        return ids

    return send_then_crash


@contextmanager
def serve_http(app: Any) -> Iterator[str]:
    """A real HTTP server (uvicorn) for an ASGI app on a free loopback port, in a thread; its
    base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, 0.02, "the HTTP server")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def ls_tasks(client: LabelStudio, project_id: int) -> list[Any]:
    """Every task of a project (every page)."""
    return list(client.tasks.list(project=project_id, fields="all", page_size=1000))


class CurationProcess(ServiceProcess):
    """A real `python -m loomstack_curation` process (gRPC and the HTTP side Label Studio
    calls)."""

    package = "loomstack_curation"

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port_file = home / "curation.port"
        self.http_port_file = home / "curation-http.port"
        super().__init__(
            home,
            "curation",
            {
                **os.environ,
                "LOOMSTACK_HOME": str(home),
                "LOOMSTACK_CURATION_PORT_FILE": str(self.port_file),
                "LOOMSTACK_CURATION_HTTP_PORT_FILE": str(self.http_port_file),
                "LOOMSTACK_CURATION_SCHEMAS_DIR": str(REPO / "schemas"),
                "LOOMSTACK_CURATION_POLL_SECONDS": "0.2",
                "LOOMSTACK_CURATION_FEED_WAIT_SECONDS": "1",
                "LOOMSTACK_CURATION_RETRY_BASE_SECONDS": "0.2",
                **env,
            },
            {"grpc": self.port_file, "http": self.http_port_file},
        )

    @property
    def http_port(self) -> int:
        return self.ports.get("http", 0)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> CurationProcess:
        super().start(timeout)
        return self.wait_ready(30)

    def stop(self) -> None:
        self.terminate(30)


def finish_batch(
    home: Path,
    batch_id: str,
    failed: set[int],
    answer: Callable[[int], str] = ticket_answer,
) -> None:
    """Runs the batch's shards the way an engine would, with prepared answers (`answer(i)` for
    the line whose custom id ends in i), and finalizes."""
    engine = create_db_engine(f"sqlite:///{home / 'inference.db'}")
    files = FileStore(engine, FilesystemBlobStore(home / "blobs"), 10**9)
    batches = Batches(engine, files, shard_lines=1000, max_lines=50_000)
    queue = LeaseQueue(engine, "test-engine:1", 60)
    while (lease := queue.claim([MODEL_NAME])) is not None:
        rows = []
        for line in queue.pending_lines(lease):
            i = int(line.custom_id[1:])
            content = None if i in failed else answer(i)
            rows.append(
                ResultRow(
                    line.line_no,
                    line.custom_id,
                    content is not None,
                    json.dumps(output_line(line.custom_id, content)),
                    5,
                    0,
                    7,
                )
            )
        assert queue.commit(lease, rows).still_owned
        queue.complete(lease)
    batches.try_finalize(batch_id)
    engine.dispose()
