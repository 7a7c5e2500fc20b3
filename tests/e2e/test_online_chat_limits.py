"""Online chat on a shared engine: a full online queue answers 503 with Retry-After at once
(never a queue without bound), batches keep running beside a chat flood, and chat forwarded
between engines runs as the caller's project (a fine-tuned model stays its owner's)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from gateway.gateway_stack import KEY_A, KEY_B
from support import (
    MODEL_NAME,
    InferenceClient,
    batch_line,
    health_status,
    signed,
    wait_until,
    write_zero_adapter,
)

from loomstack.inference.v1 import chat_pb2, models_pb2, models_pb2_grpc

pytestmark = pytest.mark.engine
# Streamed: an answered request holds its slot for the whole answer, with no deadline on it.
LONG = {"max_tokens": 64, "ignore_eos": True, "temperature": 0, "stream": True}


@contextmanager
def registered_adapter(stack: Any, directory: Path, tag: str) -> Iterator[str]:
    """A blank adapter registered as team-a's fine-tuned model (as the training service does);
    deleted afterwards. Yields its name."""
    name = f"ft:{MODEL_NAME}:{tag}:{uuid.uuid4().hex[:8]}"
    adapter = write_zero_adapter(directory)
    identity = signed("team-a", "training")
    with grpc.insecure_channel(stack.inference.address) as channel:
        models = models_pb2_grpc.ModelServiceStub(channel)
        models.CreateModel(
            models_pb2.CreateModelRequest(model_id=name, parent=MODEL_NAME, source=str(adapter)),
            metadata=identity,
            timeout=30,
        )
        try:
            yield name
        finally:
            models.DeleteModel(
                models_pb2.DeleteModelRequest(model_id=name),
                metadata=signed("team-a", "training"),
                timeout=30,
            )


def _chat(url: str, key: str, model: str = MODEL_NAME, **body: object) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "Count to 100."}], **body},
        timeout=300,
    )


def test_a_full_online_queue_answers_503_at_once_and_batches_keep_running(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    url = stack.gateway.url
    lines = [batch_line(f"b-{i}", "Say hi.", max_tokens=8) for i in range(6)]
    upload = client.files.create(
        file=("in.jsonl", b"".join(json.dumps(x).encode() + b"\n" for x in lines)),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    limit = stack.online_limit
    flood = 3 * limit

    def timed() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = _chat(url, KEY_A, **LONG)
        return response, time.monotonic() - started

    with ThreadPoolExecutor(flood) as pool:
        results = list(pool.map(lambda _: timed(), range(flood)))
    ok = [t for r, t in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code == 503]
    assert len(ok) + len(refused) == flood, [r.text for r, _ in results]
    assert limit <= len(ok) < flood and refused, [r.text[:300] for r, _ in results]
    for response, seconds in refused:
        error = response.json()["error"]
        assert error["code"] == "engine_overloaded" and str(limit) in error["message"]
        assert int(response.headers["retry-after"]) >= 1
        # Refused at once, not after waiting for a slot: faster than any answered request.
        assert seconds < min(ok)
    # The batch submitted before the flood was served beside it.
    done = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
        300,
        0.5,
        "the batch beside the chat flood",
    )
    assert done.request_counts.completed == len(lines)
    # The slots are free again.
    assert _chat(url, KEY_A, max_tokens=4).status_code == 200


def test_forwarded_chat_runs_as_the_callers_project(stack, api_replica, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An api-only replica forwards chat to the engine with the caller's signed identity: the
    engine serves team-a's adapter to team-a and refuses it to team-b as unknown; with the
    default project in its place (the old behaviour) team-a would be refused too."""
    with registered_adapter(stack, tmp_path / "adapter", "iso") as name:
        owner = InferenceClient(api_replica.address, "team-a")
        other = InferenceClient(api_replica.address, "team-b")
        body = json.dumps(
            {"model": name, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        ).encode()
        request = chat_pb2.CreateChatCompletionRequest(request_json=body)

        def owner_answered() -> bool:
            try:
                owner.chat.CreateChatCompletion(request, metadata=owner.metadata, timeout=60)
            except grpc.RpcError as exc:
                # The engine advertises the adapter once a LoRA engine runs it.
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return False
                raise
            return True

        try:
            wait_until(owner_answered, 240, 0.5, "the adapter served through the api replica")
            reply = owner.chat.CreateChatCompletion(request, metadata=owner.metadata, timeout=60)
            assert json.loads(reply.response_json)["model"] == name
            for client in (other, InferenceClient(stack.inference.address, "team-b")):
                with pytest.raises(grpc.RpcError) as denied:
                    client.chat.CreateChatCompletion(request, metadata=client.metadata, timeout=60)
                assert denied.value.code() == grpc.StatusCode.NOT_FOUND
            # Through the gateway: the owner's key is served, the other project's is told 404.
            assert _chat(stack.gateway.url, KEY_A, name, max_tokens=4).status_code == 200
            refused = _chat(stack.gateway.url, KEY_B, name, max_tokens=4)
            unknown = _chat(stack.gateway.url, KEY_B, name + "-nope", max_tokens=4)
            assert refused.status_code == unknown.status_code == 404
            assert refused.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
                name + "-nope", name
            )
        finally:
            owner.close()
            other.close()


def test_adapters_run_on_an_engine_of_their_own_while_the_base_keeps_its(  # type: ignore[no-untyped-def]
    stack, tmp_path: Path
) -> None:
    """With a separate LoRA engine the base model's engine has no LoRA: it answers while the
    LoRA engine starts (the service is not frozen by vLLM's blocking start: its health check
    and base-model chat answer throughout), and the adapter is served (chat and a batch) once
    that one is up."""
    client = stack.client()
    stalls: list[str] = []

    def adapter_served() -> httpx.Response | None:
        # A probe's budget: Kubernetes restarts a pod whose health check keeps timing out.
        if (status := health_status(stack.inference.address, "readiness", 5.0)) != "SERVING":
            stalls.append(f"health check: {status}")
        if (base := _chat(stack.gateway.url, KEY_A, max_tokens=4)).status_code != 200:
            stalls.append(f"base chat: {base.status_code} {base.text}")
        r = _chat(stack.gateway.url, KEY_A, name, max_tokens=4)
        return r if r.status_code == 200 else None

    with registered_adapter(stack, tmp_path / "adapter", "own") as name:
        served = wait_until(adapter_served, 240, 1.0, "the adapter served")
        assert served.json()["model"] == name
        log = stack.inference.log_path.read_text()
        assert '"starting the LoRA engine"' in log and '"LoRA engine ready"' in log
        assert not stalls, stalls
        lines = [batch_line(f"a-{i}", "Say hi.", max_tokens=4) for i in range(3)]
        for line in lines:
            line["body"]["model"] = name  # type: ignore[index]
        upload = client.files.create(
            file=("in.jsonl", b"".join(json.dumps(x).encode() + b"\n" for x in lines)),
            purpose="batch",
        )
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_until(
            lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b,
            120,
            0.5,
            "the adapter batch",
        )
        assert done.request_counts.completed == 3
        settings = [
            json.loads(line)
            for line in stack.inference.log_path.read_text().splitlines()
            if '"engine settings"' in line
        ]
        roles = {s["role"]: s["enable_lora"] for s in settings}
        assert roles.get("base") is False and roles.get("lora") is True, settings
