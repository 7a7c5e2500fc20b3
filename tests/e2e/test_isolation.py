"""Two projects and an admin over the real gateway, in front of every real service: nothing of
project A's is visible to, usable by, cancellable, votable, downloadable or deletable by project
B, and every refusal reads exactly like the refusal of an id that does not exist (same status,
code, type and param, the message identical up to the id), so nothing confirms that A's object
exists. The admin key sees both projects, `OpenAI-Project` makes it act as exactly one, and what
it creates without the header is invisible to a `default`-project key. Every service process
refuses a forged caller identity while its health check still answers.

The stack: the session's one inference process (api + vLLM engine, tests/e2e/conftest.py) and
Label Studio, plus a curation process, a training process whose runner never starts a trainer
(`max_concurrent_jobs=0`: jobs wait `queued`, so they can be cancelled and nothing trains) and a
gateway with keys for projects `iso-a`, `iso-b`, `default` and an admin. A's objects: batch input,
fine-tuning and adapter-archive files, a completed batch and its output file, a fine-tuning job,
a fine-tuned model (registered with a signed identity of `iso-a`, as the training service does;
its source is a stand-in path: only the denials are exercised), a completed comparison, a
curation import with its tasks and a snapshot with its training file. B has a curation import of
its own.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import httpx
import pytest
from curation.curation_support import CurationProcess, ticket
from gateway.gateway_stack import KEY_ADMIN, Gateway, start_gateway, stop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai import OpenAI
from support import MODEL_NAME, signed, wait_until
from training.training_support import TrainingProcess

from loomstack.curation.v1 import curation_pb2, curation_pb2_grpc
from loomstack.inference.v1 import (
    batches_pb2,
    batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from loomstack.training.v1 import training_pb2, training_pb2_grpc
from loomstack_curation.prompts import render_prompt, response_format
from loomstack_curation.registry import TaskRegistry
from loomstack_kit.identity import PROJECT_KEY, SIGNATURE_KEY, IdentitySigner

pytestmark = [pytest.mark.engine, pytest.mark.labelstudio]

A, B = "iso-a", "iso-b"
KEY_ISO_A, KEY_ISO_B, KEY_DEFAULT = "sk-iso-a", "sk-iso-b", "sk-iso-default"
SCHEMA = "classify_ticket"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


# --- the stack -----------------------------------------------------------------------------


@dataclass
class Objects:
    """The ids of one project's objects."""

    batch_file: str = ""
    batch: str = ""
    output_file: str = ""
    ft_file: str = ""
    adapter_file: str = ""
    job: str = ""
    model: str = ""
    comparison: str = ""
    curation_batch: str = ""
    tasks: list[int] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    """The running processes, a raw HTTP client per key and each project's objects."""

    gateway: Gateway
    inference: str
    curation: str
    training: str
    a: Objects
    b: Objects

    def http(self, key: str, project: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"}
        if project is not None:
            headers["OpenAI-Project"] = project
        return httpx.Client(base_url=self.gateway.url, headers=headers, timeout=120)

    def openai(self, key: str, project: str | None = None) -> OpenAI:
        return OpenAI(
            base_url=self.gateway.base_url, api_key=key, project=project, max_retries=0, timeout=120
        )


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _line(custom_id: str, model: str = MODEL_NAME, max_tokens: int = 4) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": max_tokens,
        },
    }


def _examples(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus 1?"},
                {"role": "assistant", "content": f"{i + 1}."},
            ]
        }
        for i in range(n)
    ]


def _curation_lines(n: int, prefix: str) -> list[dict[str, Any]]:
    schema = TaskRegistry.load(Path(__file__).resolve().parents[2] / "schemas").get(SCHEMA)
    return [
        {
            "custom_id": f"{prefix}{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL_NAME,
                "messages": [
                    {"role": "system", "content": render_prompt(schema)},
                    {"role": "user", "content": f"{prefix}: {ticket(i)}"},
                ],
                "response_format": response_format(schema),
                "max_tokens": 40,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]


def _upload(client: OpenAI, lines: list[dict[str, Any]], purpose: str) -> str:
    return client.files.create(file=("in.jsonl", _jsonl(lines)), purpose=purpose).id  # type: ignore[arg-type]


def _ok(reply: httpx.Response) -> Any:
    assert reply.status_code == 200, f"{reply.request.method} {reply.request.url}: {reply.text}"
    return reply.json()


def _register_adapter(address: str, project: str, model_id: str, source: str) -> None:
    with grpc.insecure_channel(address) as channel:
        models_pb2_grpc.ModelServiceStub(channel).CreateModel(
            models_pb2.CreateModelRequest(model_id=model_id, parent=MODEL_NAME, source=source),
            metadata=signed(project, "training"),
            timeout=30,
        )


def _upload_adapter_archive(address: str, project: str) -> str:
    """An adapter archive as the training service stores one (a system purpose)."""
    with grpc.insecure_channel(address) as channel:
        messages = [
            files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(filename="adapter.tar", purpose="adapter")
            ),
            files_pb2.UploadFileRequest(chunk=b"a stand-in archive"),
        ]
        return str(
            files_pb2_grpc.FileServiceStub(channel)
            .UploadFile(iter(messages), metadata=signed(project, "training"), timeout=30)
            .id
        )


@pytest.fixture(scope="module")
def world(
    stack: Any, label_studio_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    home = tmp_path_factory.mktemp("isolation")
    training = TrainingProcess(
        home / "training", stack.inference.address, LOOMSTACK_TRAINING_MAX_CONCURRENT_JOBS="0"
    )
    curation = CurationProcess(
        home / "curation",
        {
            "LOOMSTACK_CURATION_INFERENCE_ADDRESS": stack.inference.address,
            "LOOMSTACK_CURATION_LABEL_STUDIO_URL": label_studio_server.url,
            "LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN": label_studio_server.token,
            "LOOMSTACK_CURATION_LABEL_STUDIO_PROJECT_PREFIX": f"iso-{uuid.uuid4().hex[:6]} ",
        },
    )
    keys = home / "keys"
    keys.write_text(f"{KEY_ISO_A}:{A}\n{KEY_ISO_B}:{B}\n{KEY_DEFAULT}:default\n")
    gateway: Gateway | None = None
    try:
        training.start()
        curation.start()
        gateway = start_gateway(
            home,
            stack.inference.address,
            "gateway",
            LOOMSTACK_HOME=str(home / "gateway-home"),
            LOOMSTACK_GATEWAY_CURATION_ADDRESS=curation.address,
            LOOMSTACK_GATEWAY_TRAINING_ADDRESS=training.address,
            LOOMSTACK_GATEWAY_API_KEYS_FILE=str(keys),
            # The suite polls; the limits have tests of their own.
            LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE="0",
        )
        w = World(
            gateway,
            stack.inference.address,
            curation.address,
            training.address,
            Objects(),
            Objects(),
        )
        _create_objects(w)
        yield w
    finally:
        if gateway is not None:
            stop(gateway.proc)
        curation.stop()
        training.terminate()


def _create_objects(w: World) -> None:
    """A's objects (and B's curation import), each through the public API where it has one."""
    a, b = w.openai(KEY_ISO_A), w.openai(KEY_ISO_B)
    http_a = w.http(KEY_ISO_A)
    o = w.a
    o.batch_file = _upload(a, [_line("a0"), _line("a1")], "batch")
    o.batch = a.batches.create(
        input_file_id=o.batch_file, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    meta = {"schema_type": SCHEMA, "curation_auto_accept": "true"}
    for client, objects, n, prefix in ((a, w.a, 2, "a"), (b, w.b, 1, "b")):
        objects.curation_batch = client.batches.create(
            input_file_id=_upload(client, _curation_lines(n, prefix), "batch"),
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=meta,
        ).id
    o.ft_file = _upload(a, _examples(4), "fine-tune")
    o.job = a.fine_tuning.jobs.create(
        model=MODEL_NAME,
        training_file=o.ft_file,
        validation_file=o.ft_file,
        hyperparameters={"batch_size": 2, "n_epochs": 1},
        suffix="iso",
    ).id
    o.model = f"ft:{MODEL_NAME}:iso:{uuid.uuid4().hex[:12]}"
    _register_adapter(w.inference, A, o.model, "/stand-in/adapters/iso-a")
    o.adapter_file = _upload_adapter_archive(w.inference, A)
    o.comparison = _ok(
        http_a.post(
            "/v1/comparisons",
            json={
                "model_a": MODEL_NAME,
                "model_b": MODEL_NAME,
                "input_file_id": o.ft_file,
                "max_tokens": 4,
            },
        )
    )["id"]

    finished = wait_until(
        lambda: (x := a.batches.retrieve(o.batch)).status in TERMINAL and x, 300, 0.3, "A's batch"
    )
    assert finished.status == "completed", finished
    o.output_file = str(finished.output_file_id)
    for client, objects in ((http_a, w.a), (w.http(KEY_ISO_B), w.b)):
        imported = wait_until(
            lambda c=client, x=objects: (
                (r := c.get(f"/v1/curation/imports/{x.curation_batch}")).status_code == 200
                and r.json()["status"] == "completed"
                and r.json()["auto_accepted_tasks"] == r.json()["imported_tasks"]
                and r.json()
            ),
            300,
            0.5,
            "the curation imports",
        )
        assert imported["imported_tasks"] >= 1, imported
        tasks = _ok(client.get("/v1/curation/tasks", params={"batch_id": objects.curation_batch}))
        objects.tasks = sorted(t["id"] for t in tasks["data"])
        assert len(objects.tasks) == imported["imported_tasks"]
    o.snapshot = _ok(
        http_a.post(
            "/v1/curation/snapshots",
            json={
                "name": "iso-tickets",
                "filter": {"schema_id": SCHEMA},
            },
        )
    )
    assert o.snapshot["training_examples"] == len(w.a.tasks), o.snapshot
    done = wait_until(
        lambda: (
            (c := _ok(http_a.get(f"/v1/comparisons/{o.comparison}")))["status"]
            in ("completed", "failed")
            and c
        ),
        300,
        0.5,
        "A's comparison",
    )
    assert done["status"] == "completed", done


# --- how a refusal must look ---------------------------------------------------------------


def unknown_like(real: str) -> str:
    """An id of the same kind and length as `real` that names nothing."""
    cut = max(real.rfind(c) for c in "-_:") + 1
    tail = real[cut:]
    return real[:cut] + secrets.token_hex(len(tail))[: len(tail)]


def same_refusal(
    probe: Callable[[str], httpx.Response], secret: str, unknown: str, status: int
) -> dict[str, Any]:
    """`probe(secret)` (another project's id) answers exactly what `probe(unknown)` does."""
    denied, missing = probe(secret), probe(unknown)
    assert denied.status_code == status, denied.text
    assert missing.status_code == status, missing.text
    d, m = denied.json()["error"], missing.json()["error"]
    assert d["message"].replace(secret, "<id>") == m["message"].replace(unknown, "<id>"), (d, m)
    assert {k: v for k, v in d.items() if k != "message"} == {
        k: v for k, v in m.items() if k != "message"
    }
    return dict(d)


def _ids(reply: httpx.Response, key: str = "id") -> set[Any]:
    return {item[key] for item in _ok(reply)["data"]}


# --- inference: files, batches, models, chat --------------------------------------------------


def test_files_of_a_are_out_of_bs_reach(world: World) -> None:
    b, a = world.http(KEY_ISO_B), world.http(KEY_ISO_A)
    mine = [world.a.batch_file, world.a.output_file, world.a.ft_file, world.a.adapter_file]
    for file_id in (*mine, world.a.snapshot["training_file_id"]):
        other = unknown_like(file_id)
        same_refusal(lambda i: b.get(f"/v1/files/{i}"), file_id, other, 404)
        same_refusal(lambda i: b.get(f"/v1/files/{i}/content"), file_id, other, 404)
        same_refusal(lambda i: b.delete(f"/v1/files/{i}"), file_id, other, 404)
        # A list cursor is a lookup too.
        same_refusal(lambda i: b.get("/v1/files", params={"after": i}), file_id, other, 404)
    assert not _ids(b.get("/v1/files")) & set(mine)
    # Still there, content intact, for their owner.
    assert set(mine) <= _ids(a.get("/v1/files"))
    assert a.get(f"/v1/files/{world.a.batch_file}/content").content == _jsonl(
        [_line("a0"), _line("a1")]
    )


def test_batches_of_a_are_out_of_bs_reach(world: World) -> None:
    b, a = world.http(KEY_ISO_B), world.http(KEY_ISO_A)
    batch = world.a.batch
    other = unknown_like(batch)
    same_refusal(lambda i: b.get(f"/v1/batches/{i}"), batch, other, 404)
    same_refusal(lambda i: b.post(f"/v1/batches/{i}/cancel"), batch, other, 404)
    same_refusal(lambda i: b.get("/v1/batches", params={"after": i}), batch, other, 404)
    assert not _ids(b.get("/v1/batches", params={"limit": 100})) & {batch, world.a.curation_batch}
    assert _ok(a.get(f"/v1/batches/{batch}"))["status"] == "completed"

    # A's file as B's batch input: refused like a file that does not exist.
    def create(file_id: str) -> httpx.Response:
        return b.post(
            "/v1/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )

    before = _ids(b.get("/v1/batches", params={"limit": 100}))
    same_refusal(create, world.a.batch_file, unknown_like(world.a.batch_file), 404)
    assert _ids(b.get("/v1/batches", params={"limit": 100})) == before


def test_models_of_a_are_out_of_bs_reach(world: World) -> None:
    b, a = world.http(KEY_ISO_B), world.http(KEY_ISO_A)
    model = world.a.model
    other = unknown_like(model)
    same_refusal(lambda i: b.get(f"/v1/models/{i}"), model, other, 404)
    same_refusal(lambda i: b.delete(f"/v1/models/{i}"), model, other, 404)
    assert model not in _ids(b.get("/v1/models"))
    assert model in _ids(a.get("/v1/models"))
    assert _ok(a.get(f"/v1/models/{model}"))["owned_by"] == A
    # Base models are everyone's.
    assert MODEL_NAME in _ids(b.get("/v1/models"))

    def chat(name: str, stream: bool = False) -> httpx.Response:
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return b.post("/v1/chat/completions", json={**body, "stream": stream})

    same_refusal(chat, model, other, 404)
    same_refusal(lambda i: chat(i, stream=True), model, other, 404)
    assert _ok(chat(MODEL_NAME))["choices"], "B may chat with the base model"

    # A batch line naming A's model: 400 like an unknown model, and no batch is created.
    before = _ids(b.get("/v1/batches", params={"limit": 100}))
    client = world.openai(KEY_ISO_B)

    def batch_naming(name: str) -> httpx.Response:
        file_id = _upload(client, [_line("b0"), _line("b1", model=name)], "batch")
        return b.post(
            "/v1/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )

    same_refusal(batch_naming, model, other, 400)
    assert _ids(b.get("/v1/batches", params={"limit": 100})) == before
    # Still A's, unchanged: B's DELETE did nothing.
    assert _ok(a.get(f"/v1/models/{model}"))["id"] == model


def test_adapters_cannot_be_registered_on_as_models_or_files(world: World) -> None:
    """The ModelService (the training service registers adapters with it): B cannot take A's
    model as a parent, A's adapter archive as a source, or A's model id for its own."""

    def create(model_id: str, parent: str, source: str) -> grpc.RpcError:
        with grpc.insecure_channel(world.inference) as channel, pytest.raises(grpc.RpcError) as e:
            models_pb2_grpc.ModelServiceStub(channel).CreateModel(
                models_pb2.CreateModelRequest(model_id=model_id, parent=parent, source=source),
                metadata=signed(B, "training"),
                timeout=30,
            )
        return e.value

    def same(denied: grpc.RpcError, missing: grpc.RpcError, secret: str, unknown: str) -> None:
        assert denied.code() == missing.code() == grpc.StatusCode.NOT_FOUND, (denied, missing)
        assert (denied.details() or "").replace(secret, "<id>") == (
            missing.details() or ""
        ).replace(unknown, "<id>")

    fresh = f"ft:{MODEL_NAME}:b:{uuid.uuid4().hex[:12]}"
    model, other = world.a.model, unknown_like(world.a.model)
    same(create(fresh, model, "/x"), create(fresh, other, "/x"), model, other)
    archive, missing = world.a.adapter_file, unknown_like(world.a.adapter_file)
    same(create(fresh, MODEL_NAME, archive), create(fresh, MODEL_NAME, missing), archive, missing)

    # A's model id is taken: B cannot register over it (the registry would hand it B's source).
    refused = create(model, MODEL_NAME, "/stand-in/adapters/iso-b")
    assert refused.code() == grpc.StatusCode.ALREADY_EXISTS, refused
    a = world.http(KEY_ISO_A)
    assert _ok(a.get(f"/v1/models/{model}"))["owned_by"] == A
    with grpc.insecure_channel(world.inference) as channel:
        mine = models_pb2_grpc.ModelServiceStub(channel).GetModel(
            models_pb2.GetModelRequest(model_id=model), metadata=signed(A), timeout=30
        )
    assert mine.source == "/stand-in/adapters/iso-a"
    # Nor over a base model, which every project serves.
    assert create(MODEL_NAME, MODEL_NAME, "/x").code() == grpc.StatusCode.ALREADY_EXISTS
    assert _ok(world.http(KEY_ISO_B).get(f"/v1/models/{MODEL_NAME}"))["owned_by"] != B


def test_batch_events_and_watches_are_scoped(world: World) -> None:
    """The event feed and the batch watch (gRPC only: curation reads the feed as admin)."""
    with grpc.insecure_channel(world.inference) as channel:
        stub = batches_pb2_grpc.BatchServiceStub(channel)
        seen_by_b = {
            e.batch.id
            for e in stub.ListBatchEvents(
                batches_pb2.ListBatchEventsRequest(after_sequence=0, page_size=1000),
                metadata=signed(B),
                timeout=30,
            ).events
        }
        assert world.b.curation_batch in seen_by_b
        assert world.a.batch not in seen_by_b and world.a.curation_batch not in seen_by_b
        seen_by_admin = {
            e.batch.id
            for e in stub.ListBatchEvents(
                batches_pb2.ListBatchEventsRequest(after_sequence=0, page_size=1000),
                metadata=signed(None, "curation"),
                timeout=30,
            ).events
        }
        assert {world.a.batch, world.b.curation_batch} <= seen_by_admin
        secret, unknown = world.a.batch, unknown_like(world.a.batch)
        errors = []
        for batch_id in (secret, unknown):
            with pytest.raises(grpc.RpcError) as e:
                list(
                    stub.WatchBatch(
                        batches_pb2.WatchBatchRequest(batch_id=batch_id),
                        metadata=signed(B),
                        timeout=30,
                    )
                )
            errors.append(e.value)
    assert [e.code() for e in errors] == [grpc.StatusCode.NOT_FOUND] * 2
    assert (errors[0].details() or "").replace(secret, "<id>") == (
        errors[1].details() or ""
    ).replace(unknown, "<id>")


# --- training: fine-tuning jobs and comparisons -----------------------------------------------


def test_fine_tuning_jobs_of_a_are_out_of_bs_reach(world: World) -> None:
    b, a = world.http(KEY_ISO_B), world.http(KEY_ISO_A)
    job = world.a.job
    other = unknown_like(job)
    same_refusal(lambda i: b.get(f"/v1/fine_tuning/jobs/{i}"), job, other, 404)
    same_refusal(lambda i: b.post(f"/v1/fine_tuning/jobs/{i}/cancel"), job, other, 404)
    same_refusal(lambda i: b.get(f"/v1/fine_tuning/jobs/{i}/events"), job, other, 404)
    same_refusal(lambda i: b.get(f"/v1/fine_tuning/jobs/{i}/checkpoints"), job, other, 404)
    same_refusal(lambda i: b.get("/v1/fine_tuning/jobs", params={"after": i}), job, other, 404)
    assert job not in _ids(b.get("/v1/fine_tuning/jobs", params={"limit": 100}))
    # B's cancel did nothing: the job still waits for a runner.
    assert _ok(a.get(f"/v1/fine_tuning/jobs/{job}"))["status"] in ("validating_files", "queued")

    # A's files and A's model cannot be trained on or from.
    own = _upload(world.openai(KEY_ISO_B), _examples(4), "fine-tune")

    def create(**body: str) -> httpx.Response:
        return b.post(
            "/v1/fine_tuning/jobs", json={"model": MODEL_NAME, "training_file": own, **body}
        )

    before = _ids(b.get("/v1/fine_tuning/jobs", params={"limit": 100}))
    for file_id in (world.a.ft_file, world.a.snapshot["training_file_id"]):
        other = unknown_like(file_id)
        same_refusal(lambda i: create(training_file=i), file_id, other, 400)
        same_refusal(lambda i: create(validation_file=i), file_id, other, 400)
    same_refusal(lambda i: create(model=i), world.a.model, unknown_like(world.a.model), 400)
    assert _ids(b.get("/v1/fine_tuning/jobs", params={"limit": 100})) == before


def test_comparisons_of_a_are_out_of_bs_reach(world: World) -> None:
    b, a = world.http(KEY_ISO_B), world.http(KEY_ISO_A)
    cmp_id = world.a.comparison
    other = unknown_like(cmp_id)
    same_refusal(lambda i: b.get(f"/v1/comparisons/{i}"), cmp_id, other, 404)
    same_refusal(lambda i: b.get(f"/v1/comparisons/{i}/items"), cmp_id, other, 404)
    vote = {"winner": "b", "voter": "mallory"}
    same_refusal(
        lambda i: b.post(f"/v1/comparisons/{i}/items/0/votes", json=vote), cmp_id, other, 404
    )
    same_refusal(lambda i: b.get("/v1/comparisons", params={"after": i}), cmp_id, other, 404)
    assert cmp_id not in _ids(b.get("/v1/comparisons", params={"limit": 100}))
    # B's vote was not counted; A's own vote is.
    assert _ok(a.get(f"/v1/comparisons/{cmp_id}"))["votes"] == {"a": 0, "b": 0, "tie": 0}
    _ok(a.post(f"/v1/comparisons/{cmp_id}/items/0/votes", json={"winner": "a", "voter": "alice"}))
    assert _ok(a.get(f"/v1/comparisons/{cmp_id}"))["votes"] == {"a": 1, "b": 0, "tie": 0}

    def create(**body: str) -> httpx.Response:
        own = _upload(world.openai(KEY_ISO_B), _examples(1), "fine-tune")
        request = {"model_a": MODEL_NAME, "model_b": MODEL_NAME, "input_file_id": own, **body}
        return b.post("/v1/comparisons", json=request)

    before = _ids(b.get("/v1/comparisons", params={"limit": 100}))
    file_id = world.a.ft_file
    same_refusal(lambda i: create(input_file_id=i), file_id, unknown_like(file_id), 404)
    model, unknown = world.a.model, unknown_like(world.a.model)
    same_refusal(lambda i: create(model_a=i), model, unknown, 400)
    same_refusal(lambda i: create(model_b=i), model, unknown, 400)
    assert _ids(b.get("/v1/comparisons", params={"limit": 100})) == before


# --- curation ------------------------------------------------------------------------------


def test_curation_of_a_is_out_of_bs_reach(world: World) -> None:
    b, a = world.http(KEY_ISO_B), world.http(KEY_ISO_A)
    batch = world.a.curation_batch
    other = unknown_like(batch)
    same_refusal(lambda i: b.get(f"/v1/curation/imports/{i}"), batch, other, 404)
    imports = {i["batch_id"] for i in _ok(b.get("/v1/curation/imports"))["data"]}
    assert imports == {world.b.curation_batch}

    b_tasks = _ids(b.get("/v1/curation/tasks", params={"limit": 1000}))
    assert b_tasks == set(world.b.tasks)
    assert _ok(b.get("/v1/curation/tasks", params={"batch_id": batch}))["data"] == []
    stats = _ok(b.get("/v1/curation/stats"))
    # B's statistics count B's tasks only.
    assert stats["tasks"] == len(world.b.tasks), stats
    assert sum(s["tasks"] for s in stats["schemas"]) == len(world.b.tasks), stats

    task = world.a.tasks[0]
    unknown_task = 2_000_000_000 + task
    for probe in (
        lambda i: b.post("/v1/curation/tasks/gold", json={"task_ids": [int(i)]}),
        lambda i: b.post("/v1/curation/tasks/gold", json={"task_ids": [int(i)], "gold": False}),
        lambda i: b.post(f"/v1/curation/tasks/{i}/gold"),
        lambda i: b.delete(f"/v1/curation/tasks/{i}/gold"),
    ):
        same_refusal(probe, str(task), str(unknown_task), 404)
    # B's gold star did not land on A's task.
    a_tasks = _ok(a.get("/v1/curation/tasks", params={"batch_id": batch}))["data"]
    assert [t["gold"] for t in a_tasks] == [False] * len(world.a.tasks)

    snap = world.a.snapshot["id"]
    other = unknown_like(snap)
    same_refusal(lambda i: b.get(f"/v1/curation/snapshots/{i}"), snap, other, 404)
    for split in ("train", "validation"):
        same_refusal(
            lambda i, s=split: b.get(f"/v1/curation/snapshots/{i}/content", params={"split": s}),
            snap,
            other,
            404,
        )
    assert snap not in _ids(b.get("/v1/curation/snapshots"))
    assert _ok(b.get("/v1/curation/snapshots", params={"name": "iso-tickets"}))["data"] == []
    # B's snapshot of the same name is B's first version and holds only B's tasks.
    mine = _ok(
        b.post(
            "/v1/curation/snapshots",
            json={"name": "iso-tickets", "filter": {"schema_id": SCHEMA}},
        )
    )
    assert mine["version"] == 1 and mine["training_examples"] == len(world.b.tasks), mine
    content = b.get(f"/v1/curation/snapshots/{mine['id']}/content").text
    assert "b: Ticket" in content and "a: Ticket" not in content
    # A's snapshot still serves A.
    assert a.get(f"/v1/curation/snapshots/{snap}/content").status_code == 200


def test_label_studio_projects_are_per_loomstack_project(world: World) -> None:
    """A Label Studio user of one project never sees another project's model outputs."""
    a = _ok(world.http(KEY_ISO_A).get(f"/v1/curation/imports/{world.a.curation_batch}"))
    b = _ok(world.http(KEY_ISO_B).get(f"/v1/curation/imports/{world.b.curation_batch}"))
    assert a["label_studio_project_id"] != b["label_studio_project_id"], (a, b)


# --- the admin key -------------------------------------------------------------------------


LISTS = (
    ("/v1/files", "id", {}),
    ("/v1/batches", "id", {"limit": 100}),
    ("/v1/models", "id", {}),
    ("/v1/fine_tuning/jobs", "id", {"limit": 100}),
    ("/v1/comparisons", "id", {"limit": 100}),
    ("/v1/curation/imports", "batch_id", {}),
    ("/v1/curation/tasks", "id", {"limit": 1000}),
    ("/v1/curation/snapshots", "id", {}),
)


def test_the_admin_sees_both_projects_and_acts_for_one_with_openai_project(world: World) -> None:
    admin, a, b = world.http(KEY_ADMIN), world.http(KEY_ISO_A), world.http(KEY_ISO_B)
    as_a = world.http(KEY_ADMIN, project=A)
    for path, key, params in LISTS:
        seen_by_a = _ids(a.get(path, params=params), key)
        seen_by_b = _ids(b.get(path, params=params), key)
        # Acting for A it sees exactly what A's own key sees; on its own, both projects.
        assert _ids(as_a.get(path, params=params), key) == seen_by_a, path
        assert seen_by_a | seen_by_b <= _ids(admin.get(path, params=params), key), path
    assert _ok(as_a.get("/v1/curation/stats")) == _ok(a.get("/v1/curation/stats"))
    for path in (
        f"/v1/files/{world.a.batch_file}",
        f"/v1/batches/{world.a.batch}",
        f"/v1/models/{world.a.model}",
        f"/v1/fine_tuning/jobs/{world.a.job}",
        f"/v1/comparisons/{world.a.comparison}",
        f"/v1/curation/imports/{world.a.curation_batch}",
        f"/v1/curation/imports/{world.b.curation_batch}",
        f"/v1/curation/snapshots/{world.a.snapshot['id']}",
    ):
        _ok(admin.get(path))
    # Acting for A it cannot reach B's objects.
    same_refusal(
        lambda i: as_a.get(f"/v1/curation/imports/{i}"),
        world.b.curation_batch,
        unknown_like(world.b.curation_batch),
        404,
    )

    # What the admin creates for A is A's (and not B's).
    for_a = world.openai(KEY_ADMIN, project=A)
    file_id = _upload(for_a, [_line("x")], "batch")
    assert _ok(a.get(f"/v1/files/{file_id}"))["id"] == file_id
    assert b.get(f"/v1/files/{file_id}").status_code == 404
    job = for_a.fine_tuning.jobs.create(
        model=MODEL_NAME, training_file=world.a.ft_file, hyperparameters={"batch_size": 2}
    )
    assert _ok(a.get(f"/v1/fine_tuning/jobs/{job.id}"))["organization_id"] == A
    _ok(a.post(f"/v1/fine_tuning/jobs/{job.id}/cancel"))
    # A project key cannot name another project.
    refused = world.http(KEY_ISO_B, project=A).get("/v1/files")
    assert refused.status_code == 403, refused.text


def test_what_the_admin_creates_without_a_project_is_not_the_default_projects(
    world: World,
) -> None:
    admin, default = world.openai(KEY_ADMIN), world.http(KEY_DEFAULT)
    file_id = _upload(admin, [_line("x")], "batch")
    assert admin.files.retrieve(file_id).id == file_id
    other = unknown_like(file_id)
    same_refusal(lambda i: default.get(f"/v1/files/{i}"), file_id, other, 404)
    same_refusal(lambda i: default.get(f"/v1/files/{i}/content"), file_id, other, 404)
    assert file_id not in _ids(default.get("/v1/files"))
    batch = admin.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    same_refusal(lambda i: default.get(f"/v1/batches/{i}"), batch.id, unknown_like(batch.id), 404)
    assert batch.id not in _ids(default.get("/v1/batches", params={"limit": 100}))
    for key in (KEY_ISO_A, KEY_ISO_B):
        assert world.http(key).get(f"/v1/files/{file_id}").status_code == 404
    wait_until(
        lambda: admin.batches.retrieve(batch.id).status in TERMINAL, 300, 0.3, "admin's batch"
    )


def test_admin_routes_are_refused_to_project_keys(world: World) -> None:
    admin = world.http(KEY_ADMIN)
    assert admin.get("/admin/services").status_code == 200
    for http in (world.http(KEY_ISO_A), world.http(KEY_ISO_B), world.http(KEY_ADMIN, project=A)):
        for method, path, body in (
            ("GET", "/admin/services", None),
            ("POST", "/admin/services/inference/restart", None),
            ("POST", "/admin/services/inference/scale", {"replicas": 0}),
            # The refusal comes before the body is looked at.
            ("POST", "/admin/services/inference/scale", {"replicas": "many"}),
        ):
            reply = http.request(method, path, json=body)
            assert reply.status_code == 403, (method, path, reply.text)
            assert reply.json()["error"]["code"] == "admin_only"


# --- forged identities on every service process ----------------------------------------------


def _forgeries() -> dict[str, tuple[tuple[str, str], ...]]:
    """Caller metadata that must not authenticate."""
    with mock.patch("loomstack_kit.identity.time.time", return_value=time.time() - 3600):
        stale = signed(None)
    wrong_secret = IdentitySigner(b"not-the-installation-secret", "gateway").metadata(None)
    as_a = dict(signed(A))
    return {
        "no identity": (),
        "bare project header": ((PROJECT_KEY, "*"),),
        "wrong signature": tuple((k, str(v)) for k, v in wrong_secret),
        "another project's signature": tuple(
            (k, "*" if k == PROJECT_KEY else str(v)) for k, v in as_a.items()
        ),
        "mangled signature": tuple(
            (k, "0" * 64 if k == SIGNATURE_KEY else str(v)) for k, v in signed(None)
        ),
        "stale signature": tuple((k, str(v)) for k, v in stale),
    }


def test_every_service_refuses_a_forged_identity_and_still_answers_health(world: World) -> None:
    calls: dict[str, tuple[str, Callable[[grpc.Channel, Any], Any]]] = {
        "inference": (
            world.inference,
            lambda ch, md: files_pb2_grpc.FileServiceStub(ch).ListFiles(
                files_pb2.ListFilesRequest(), metadata=md, timeout=10
            ),
        ),
        "curation": (
            world.curation,
            lambda ch, md: curation_pb2_grpc.ImportServiceStub(ch).ListImports(
                curation_pb2.ListImportsRequest(), metadata=md, timeout=10
            ),
        ),
        "training": (
            world.training,
            lambda ch, md: training_pb2_grpc.FineTuningServiceStub(ch).ListFineTuningJobs(
                training_pb2.ListFineTuningJobsRequest(), metadata=md, timeout=10
            ),
        ),
    }
    for service, (address, call) in calls.items():
        with grpc.insecure_channel(address) as channel:
            for what, metadata in _forgeries().items():
                with pytest.raises(grpc.RpcError) as refused:
                    call(channel, metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (service, what)
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "liveness", "readiness"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, name)
            call(channel, signed(None))  # the real thing is served
