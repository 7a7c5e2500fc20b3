"""The curation service as a real process: it follows the real inference service's batch
event feed, imports a finished batch into the real Label Studio, serves its gRPC API, gets
annotations by Label Studio's own webhook calls (the secret is checked), builds a snapshot
stored through the inference FileService, answers as a Label Studio ML backend, and comes
back after a restart without a second project or a second import.

The batch is finalized through the inference service's domain objects (no vLLM needed): the
curation service only ever sees the feed and the files, as in production."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from curation_support import (
    CurationProcess,
    finish_batch,
    input_line,
    ticket,
)
from google.protobuf.timestamp_pb2 import Timestamp
from label_studio_sdk.client import LabelStudio
from support import InferenceClient, signed, wait_until

from loomstack.curation.v1 import curation_pb2, curation_pb2_grpc
from loomstack_curation.labelstudio_server import LabelStudioServer, free_port
from loomstack_curation.predictions import regions
from loomstack_curation.registry import TaskRegistry
from loomstack_curation.webhook import SECRET_HEADER

pytestmark = pytest.mark.labelstudio
SECRET = "s3cret-webhook-value"
ML_PASSWORD = "ml-backend-password-of-the-test"
ML_AUTH = ("label-studio", ML_PASSWORD)
N = 60


class Stubs:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.schemas = curation_pb2_grpc.SchemaServiceStub(self.channel)
        self.tasks = curation_pb2_grpc.TaskServiceStub(self.channel)
        self.imports = curation_pb2_grpc.ImportServiceStub(self.channel)
        self.snapshots = curation_pb2_grpc.SnapshotServiceStub(self.channel)


@pytest.fixture(scope="module")
def service(
    inference_api: Any,
    label_studio_server: LabelStudioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CurationProcess]:
    http_port = free_port()
    home = tmp_path_factory.mktemp("curation-service")
    password_file = home / "ml-backend.password"
    password_file.write_text(ML_PASSWORD + "\n")
    process = CurationProcess(
        home,
        {
            "LOOMSTACK_CURATION_INFERENCE_ADDRESS": inference_api.address,
            "LOOMSTACK_CURATION_LABEL_STUDIO_URL": label_studio_server.url,
            "LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN": label_studio_server.token,
            "LOOMSTACK_CURATION_LABEL_STUDIO_PROJECT_PREFIX": f"svc-{uuid.uuid4().hex[:6]} ",
            "LOOMSTACK_CURATION_HTTP_PORT": str(http_port),
            "LOOMSTACK_CURATION_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
            "LOOMSTACK_CURATION_WEBHOOK_SECRET": SECRET,
            # Annotations must arrive by webhook here; the reconcile has its own tests.
            "LOOMSTACK_CURATION_RECONCILE_SECONDS": "3600",
            "LOOMSTACK_CURATION_ML_BACKEND_USERNAME": "label-studio",
            "LOOMSTACK_CURATION_ML_BACKEND_PASSWORD_FILE": str(password_file),
        },
    ).start()
    try:
        yield process
    finally:
        process.stop()


def test_a_finished_batch_flows_through_the_service(
    service: CurationProcess, inference_api: Any, label_studio: LabelStudio
) -> None:
    stubs = Stubs(service.address)
    inference = InferenceClient(inference_api.address)
    failed = {7, 21, 42}
    batch = inference.create_batch(
        [input_line(f"t{i}", ticket(i)) for i in range(N)],
        metadata={"schema_type": "classify_ticket", "owner": "tests"},
    )
    unknown = inference.create_batch(
        [input_line(f"t{i}", ticket(i)) for i in range(3)], metadata={"schema_type": "nope"}
    )
    plain = inference.create_batch([input_line("t0", ticket(0))])  # no schema_type: ignored
    for b in (batch, unknown, plain):
        finish_batch(Path(inference_api.home), b.id, failed)

    def import_in(batch_id: str, status: int) -> Any:
        try:
            reply = stubs.imports.GetImport(
                curation_pb2.GetImportRequest(batch_id=batch_id), metadata=signed("default")
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND  # not queued yet
            return None
        return reply if reply.status == status else None

    done = wait_until(
        lambda: import_in(batch.id, curation_pb2.IMPORT_STATUS_COMPLETED), 60, 0.2, "the import"
    )
    assert (done.result_lines, done.skipped_lines, done.imported_tasks) == (N - 3, 3, N - 3)
    bad = wait_until(
        lambda: import_in(unknown.id, curation_pb2.IMPORT_STATUS_FAILED), 30, 0.2, "the failure"
    )
    assert "unknown schema 'nope'" in bad.error
    with pytest.raises(grpc.RpcError) as caught:
        stubs.imports.GetImport(
            curation_pb2.GetImportRequest(batch_id=plain.id), metadata=signed("default")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # Tasks through the API, paged; Label Studio has exactly these.
    seen, token = [], ""
    while True:
        page = stubs.tasks.ListTasks(
            curation_pb2.ListTasksRequest(batch_id=batch.id, page_size=25, page_token=token),
            metadata=signed("default"),
        )
        seen += list(page.tasks)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == N - 3 and len({t.id for t in seen}) == N - 3
    assert all(t.status == curation_pb2.TASK_STATUS_IMPORTED for t in seen)
    ls_ids = {t.id for t in label_studio.tasks.list(project=done.label_studio_project_id)}
    assert ls_ids == {t.id for t in seen}
    # Another project sees none of them.
    other = stubs.tasks.ListTasks(curation_pb2.ListTasksRequest(), metadata=signed("other"))
    assert list(other.tasks) == []

    # The webhook refuses a missing or wrong secret, and records nothing.
    url = f"{service.http_url}/labelstudio/webhook"
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": seen[0].id}}
    assert httpx.post(url, json=payload).status_code == 401
    assert httpx.post(url, json=payload, headers={SECRET_HEADER: "wrong"}).status_code == 401
    stats = stubs.tasks.GetTaskStatistics(
        curation_pb2.GetTaskStatisticsRequest(), metadata=signed("default")
    )
    assert stats.annotated == 0

    # People annotate in Label Studio; Label Studio calls our webhook itself.
    schema = TaskRegistry.load(Path(__file__).resolve().parents[2] / "schemas").get(
        "classify_ticket"
    )
    starred = [t.id for t in seen[:10]]
    for task_id in starred:
        label_studio.annotations.create(
            id=task_id,
            result=regions(schema, {"category": "Billing", "urgency": "High"}, gold=True),
        )
    label_studio.annotations.create(
        id=seen[10].id, result=regions(schema, {"category": "Other", "urgency": "Low"})
    )
    stats = wait_until(
        lambda: (
            s
            if (
                s := stubs.tasks.GetTaskStatistics(
                    curation_pb2.GetTaskStatisticsRequest(), metadata=signed("default")
                )
            ).annotated
            == 11
            else None
        ),
        30,
        0.3,
        "Label Studio's webhook calls",
    )
    assert stats.gold == 10
    assert [s.schema_id for s in stats.schemas] == ["classify_ticket"]

    # A snapshot of the gold ones, read back through the inference service's files.
    snap = stubs.snapshots.CreateSnapshot(
        curation_pb2.CreateSnapshotRequest(
            name="svc-gold", filter=curation_pb2.SnapshotFilter(gold_only=True)
        ),
        metadata=signed("default"),
    )
    assert (snap.version, snap.training_examples) == (1, 10)
    lines = inference.content(snap.training_file_id).decode().splitlines()
    assert len(lines) == 10
    contents = {json.loads(x)["messages"][1]["content"] for x in lines}
    assert contents == {json.loads(t.data_json)["ticket"] for t in seen[:10]}
    manifest = json.loads(snap.manifest_json)
    assert manifest["counts"]["training"] == 10
    with pytest.raises(grpc.RpcError) as caught:
        stubs.snapshots.CreateSnapshot(
            curation_pb2.CreateSnapshotRequest(
                name="nothing", filter=curation_pb2.SnapshotFilter(min_rating=3)
            ),
            metadata=signed("default"),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = stubs.snapshots.ListSnapshots(
        curation_pb2.ListSnapshotsRequest(), metadata=signed("default")
    )
    assert [s.id for s in listed.snapshots] == [snap.id]

    # Schemas and their renderings.
    schemas = stubs.schemas.ListSchemas(
        curation_pb2.ListSchemasRequest(), metadata=signed("default")
    )
    by_id = {s.id: s for s in schemas.schemas}
    assert by_id["classify_ticket"].label_studio_project_id == done.label_studio_project_id
    config = stubs.schemas.RenderLabelConfig(
        curation_pb2.RenderLabelConfigRequest(schema_id="classify_ticket"),
        metadata=signed("default"),
    )
    assert config.label_config.startswith("<View>")
    prompt = stubs.schemas.RenderPrompt(
        curation_pb2.RenderPromptRequest(schema_id="classify_ticket"), metadata=signed("default")
    )
    assert json.loads(prompt.response_format_json)["type"] == "json_schema"
    with pytest.raises(grpc.RpcError) as caught:
        stubs.schemas.GetSchema(
            curation_pb2.GetSchemaRequest(schema_id="nope"), metadata=signed("default")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # The ML backend protocol, with Label Studio's basic auth (from the password file).
    ml = f"{service.http_url}/ml"
    assert httpx.get(f"{ml}/health").status_code == 401
    assert httpx.get(f"{ml}/health", auth=ML_AUTH).json()["status"] == "UP"
    project = f"{done.label_studio_project_id}.1700000000"
    setup = httpx.post(
        f"{ml}/setup", json={"project": project, "schema": config.label_config}, auth=ML_AUTH
    )
    assert setup.status_code == 200 and setup.json()["model_version"]
    body = {"project": project, "tasks": [{"id": 1, "data": {"ticket": "x"}}]}
    assert httpx.post(f"{ml}/predict", json=body, auth=("label-studio", "wrong")).status_code == 401
    unknown_project = httpx.post(
        f"{ml}/predict", json={"project": "999999.1", "tasks": []}, auth=ML_AUTH
    )
    assert unknown_project.status_code == 404
    assert "not a Loomstack curation project" in unknown_project.json()["error"]["message"]
    too_many = httpx.post(f"{ml}/predict", json={**body, "tasks": body["tasks"] * 65}, auth=ML_AUTH)
    assert too_many.status_code == 413 and "the limit is 64" in too_many.text
    no_engine = httpx.post(f"{ml}/predict", json=body, auth=ML_AUTH)
    assert no_engine.status_code == 503  # the api-only inference service has no engine
    hook = httpx.post(f"{ml}/webhook", json={"action": "START_TRAINING"}, auth=ML_AUTH)
    assert hook.status_code == 201

    # A restart: same project, same tasks, no second import of the replayed feed.
    projects_before = len(list(label_studio.projects.list()))
    service.stop()
    service.start()
    stubs = Stubs(service.address)
    listed_imports = wait_until(
        lambda: stubs.imports.ListImports(
            curation_pb2.ListImportsRequest(), metadata=signed("default")
        ),
        10,
        what="the restarted service",
    )
    assert sorted(i.batch_id for i in listed_imports.imports) == sorted([batch.id, unknown.id])
    after = stubs.tasks.GetTaskStatistics(
        curation_pb2.GetTaskStatisticsRequest(), metadata=signed("default")
    )
    assert (after.tasks, after.annotated, after.gold) == (N - 3, 11, 10)
    assert len(list(label_studio.projects.list())) == projects_before
    assert len(list(label_studio.tasks.list(project=done.label_studio_project_id))) == N - 3


def test_the_gateway_serves_curation(
    service: CurationProcess, inference_api: Any, tmp_path: Path
) -> None:
    """`/v1/curation/...` through the real gateway: an admin key, and another project's."""
    from gateway_stack import KEY_ADMIN, KEY_B, start_gateway, stop

    gateway = start_gateway(
        tmp_path,
        inference_api.address,
        "gateway",
        LOOMSTACK_GATEWAY_CURATION_ADDRESS=service.address,
    )
    try:
        http, other = gateway.http(KEY_ADMIN), gateway.http(KEY_B)
        assert gateway.http(None).get("/v1/curation/schemas").status_code == 401
        schemas = http.get("/v1/curation/schemas").json()
        assert {s["id"] for s in schemas["data"]} >= {"classify_ticket", "rate_answer"}
        xml = http.get("/v1/curation/schemas/classify_ticket/label_config?format=xml")
        assert xml.headers["content-type"].startswith("application/xml")
        assert xml.text.startswith("<View>")
        prompt = http.get("/v1/curation/schemas/rate_answer/prompt").json()
        assert prompt["system_prompt"] and prompt["response_format"] is None
        missing = http.get("/v1/curation/schemas/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

        page = http.get("/v1/curation/tasks", params={"limit": 5, "status": "imported"}).json()
        assert len(page["data"]) == 5 and page["has_more"]
        assert page["data"][0]["status"] == "imported" and "ticket" in page["data"][0]["data"]
        nxt = http.get("/v1/curation/tasks", params={"limit": 5, "after": page["last_id"]}).json()
        assert not {t["id"] for t in nxt["data"]} & {t["id"] for t in page["data"]}
        assert other.get("/v1/curation/tasks").json()["data"] == []

        task_id = page["data"][0]["id"]
        starred = http.post("/v1/curation/tasks/gold", json={"task_ids": [task_id]}).json()
        assert starred["data"][0]["gold"] is True
        assert http.post("/v1/curation/tasks/gold", json={"task_ids": []}).status_code == 400
        stats = http.get("/v1/curation/stats").json()
        assert stats["object"] == "curation.statistics" and stats["gold"] >= 11

        imports = http.get("/v1/curation/imports").json()["data"]
        assert {i["status"] for i in imports} == {"completed", "failed"}

        # An admin's snapshot takes the tasks of the project it acts for (and is recorded
        # there): its own project has none, the default project's are named by the header.
        gold = {"name": "gw-gold", "filter": {"gold_only": True}, "format": "chatml"}
        own = http.post("/v1/curation/snapshots", json=gold)
        assert own.status_code == 400 and own.json()["error"]["code"] == "empty_snapshot"
        snap = http.post(
            "/v1/curation/snapshots", json=gold, headers={"OpenAI-Project": "default"}
        ).json()
        assert snap["object"] == "curation.snapshot" and snap["format"] == "chatml"
        assert snap["project"] == "default"
        assert snap["training_examples"] == 11 and snap["manifest"]["counts"]["training"] == 11
        content = http.get(f"/v1/curation/snapshots/{snap['id']}/content")
        assert content.status_code == 200
        assert content.content == http.get(f"/v1/files/{snap['training_file_id']}/content").content
        lines = content.content.splitlines()
        assert len(lines) == 11 and json.loads(lines[0])["text"].startswith("<|im_start|>")
        no_validation = http.get(f"/v1/curation/snapshots/{snap['id']}/content?split=validation")
        assert no_validation.status_code == 404
        assert other.get(f"/v1/curation/snapshots/{snap['id']}").status_code == 404
        empty = http.post(
            "/v1/curation/snapshots", json={"name": "none", "filter": {"schema_id": "rate_answer"}}
        )
        assert empty.status_code == 400
        assert empty.json()["error"]["code"] == "empty_snapshot"
        bad = http.post("/v1/curation/snapshots", json={"name": "x", "format": "csv"})
        assert bad.status_code == 400
        listed = http.get("/v1/curation/snapshots", params={"name": "gw-gold"}).json()["data"]
        assert [s["version"] for s in listed] == [1]

        # The CLI over the same routes.
        env = {**os.environ, "LOOMSTACK_BASE_URL": gateway.base_url, "LOOMSTACK_API_KEY": KEY_ADMIN}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "loomstack_cli", "curation", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        assert json.loads(cli("stats", "--json").stdout)["gold"] == stats["gold"]
        target = tmp_path / "gold.jsonl"
        assert cli("snapshot", "download", snap["id"], "-o", str(target)).returncode == 0
        assert target.read_bytes() == content.content
        failed = cli("schema", "nope")
        assert failed.returncode == 2 and failed.stderr.startswith("error: unknown schema 'nope'")
    finally:
        stop(gateway.proc)


def test_auto_accept_through_the_api(service: CurationProcess, inference_api: Any) -> None:
    """A batch with `curation_auto_accept`: the import, its tasks and a snapshot say which
    annotations are auto-accepted predictions, and a snapshot can take people's only."""
    stubs = Stubs(service.address)
    inference = InferenceClient(inference_api.address)
    started = time.time()
    batch = inference.create_batch(
        [input_line(f"t{i}", ticket(i)) for i in range(4)],
        metadata={"schema_type": "classify_ticket", "curation_auto_accept": "true"},
    )
    finish_batch(Path(inference_api.home), batch.id, set())

    def completed() -> Any:
        try:
            reply = stubs.imports.GetImport(
                curation_pb2.GetImportRequest(batch_id=batch.id), metadata=signed("default")
            )
        except grpc.RpcError:
            return None
        return reply if reply.status == curation_pb2.IMPORT_STATUS_COMPLETED else None

    done = wait_until(completed, 60, 0.2, "the auto-accepted import")
    assert done.auto_accept and (done.imported_tasks, done.auto_accepted_tasks) == (4, 4)
    tasks = stubs.tasks.ListTasks(
        curation_pb2.ListTasksRequest(batch_id=batch.id), metadata=signed("default")
    ).tasks
    assert len(tasks) == 4
    assert all(t.auto_accepted and t.status == curation_pb2.TASK_STATUS_ANNOTATED for t in tasks)

    since = Timestamp()
    since.FromNanoseconds(int(started * 1e9))
    snap = stubs.snapshots.CreateSnapshot(
        curation_pb2.CreateSnapshotRequest(
            name="svc-auto", filter=curation_pb2.SnapshotFilter(start_time=since)
        ),
        metadata=signed("default"),
    )
    assert (snap.training_examples, snap.auto_accepted_examples) == (4, 4)
    with pytest.raises(grpc.RpcError) as caught:
        stubs.snapshots.CreateSnapshot(
            curation_pb2.CreateSnapshotRequest(
                name="svc-people",
                filter=curation_pb2.SnapshotFilter(start_time=since, exclude_auto_accepted=True),
            ),
            metadata=signed("default"),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
