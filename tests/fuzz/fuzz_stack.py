"""The stack the fuzzer attacks: the real gateway in front of the real inference (api role, no
vLLM engine), curation (no Label Studio) and training (a runner that never starts a trainer)
services, each a process on ephemeral ports with its own home, plus a few objects of the
fuzzing project for generated requests to find.

Without an engine an online chat answers 503 `engine_not_ready`; without Label Studio a curation
call that needs it answers 503 `label_studio_unavailable`. Both are answers about availability
(the same request succeeds once the component is up), not about the request, so the fuzz
accepts exactly those two 503 codes and counts every other 5xx. The session's Label Studio is
not used: with no engine no batch completes, so no curation task exists for a route to take to
Label Studio, and starting it costs a fuzz run alone a minute. The gateway's /admin backend is
`local` over an empty home (no process to restart).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from curation.curation_support import CurationProcess
from gateway.gateway_stack import MODEL_NAME, Gateway, start_gateway, start_inference, stop
from support import postgres_database, wait_until
from training.training_support import TrainingProcess

KEY_FUZZ, KEY_FUZZ_ADMIN = "sk-fuzz-project", "sk-fuzz-admin"
PROJECT = "fuzz"
# High enough that the fuzzer never meets it, low enough that the limit layer stays in the path.
RATE_LIMIT_PER_MINUTE = 1_000_000
# The repository's plugin: its routes are in the document, so every one of them is fuzzed.
PLUGINS = "aris"


@dataclass
class Seeded:
    """Ids of the fuzzing project's objects, by the path parameter that names them."""

    ids: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FuzzStack:
    """The running gateway and what it was seeded with."""

    gateway: Gateway
    seeded: Seeded


def _jsonl(lines: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _examples(n: int) -> list[dict[str, object]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus 1?"},
                {"role": "assistant", "content": f"{i + 1}."},
            ]
        }
        for i in range(n)
    ]


def _seed(gateway: Gateway) -> Seeded:
    """One of each object the routes name by id, created through the public API."""
    client = gateway.client(KEY_FUZZ)
    batch_line = {
        "custom_id": "fuzz-0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]},
    }
    batch_file = client.files.create(file=("in.jsonl", _jsonl([batch_line])), purpose="batch").id
    batch = client.batches.create(
        input_file_id=batch_file, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    ft_file = client.files.create(file=("ft.jsonl", _jsonl(_examples(4))), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=MODEL_NAME, training_file=ft_file).id
    with gateway.http(KEY_FUZZ) as http:
        reply = http.post(
            "/v1/comparisons",
            json={"model_a": MODEL_NAME, "model_b": MODEL_NAME, "input_file_id": ft_file},
        )
        assert reply.status_code == 200, reply.text
        comparison = reply.json()["id"]
        made = http.post(
            "/v1/plugins/aris/conquests", json={"type": "CANDIDATE", "title": "fuzzed"}
        )
        assert made.status_code == 200, made.text
        conquest = made.json()["id"]
    return Seeded(
        {
            "file_id": [batch_file, ft_file],
            "batch_id": [batch],
            "job_id": [job],
            "comparison_id": [comparison],
            "model_id": [MODEL_NAME],
            "schema_id": ["classify_ticket"],
            "conquest_id": [conquest],
        }
    )


@contextmanager
def fuzz_stack(home: Path) -> Iterator[FuzzStack]:
    """Starts the services (each on a fresh PostgreSQL database: production's, and the stricter
    one — it refuses NUL in text, which SQLite stores) and the gateway, seeds them, and stops
    everything afterwards."""
    with ExitStack() as stack:
        databases = {
            name: stack.enter_context(postgres_database())
            for name in ("inference", "curation", "training", "aristotle")
        }
        (home / "inference").mkdir(parents=True, exist_ok=True)
        inference_address, inference = start_inference(
            home / "inference", LOOMSTACK_INFERENCE_DATABASE_URL=databases["inference"]
        )
        stack.callback(stop, inference)
        training = TrainingProcess(
            home / "training",
            inference_address,
            LOOMSTACK_TRAINING_MAX_CONCURRENT_JOBS="0",
            LOOMSTACK_TRAINING_DATABASE_URL=databases["training"],
        )
        stack.callback(training.terminate)
        training.start()
        curation = CurationProcess(
            home / "curation",
            {
                "LOOMSTACK_CURATION_INFERENCE_ADDRESS": inference_address,
                "LOOMSTACK_CURATION_DATABASE_URL": databases["curation"],
                # The plugin's routes are fuzzed too (its own database on PostgreSQL).
                "LOOMSTACK_CURATION_PLUGINS": PLUGINS,
                "LOOMSTACK_ARIS_DATABASE_URL": databases["aristotle"],
            },
        )
        stack.callback(curation.stop)
        curation.start()
        keys = home / "keys"
        keys.write_text(f"{KEY_FUZZ}:{PROJECT}\n{KEY_FUZZ_ADMIN}:*\n")
        gateway = start_gateway(
            home,
            inference_address,
            "gateway",
            LOOMSTACK_HOME=str(home / "gateway-home"),
            LOOMSTACK_GATEWAY_API_KEYS="",
            LOOMSTACK_GATEWAY_API_KEYS_FILE=str(keys),
            LOOMSTACK_GATEWAY_CURATION_ADDRESS=curation.address,
            LOOMSTACK_GATEWAY_TRAINING_ADDRESS=training.address,
            LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT_PER_MINUTE),
            LOOMSTACK_GATEWAY_PLUGINS=PLUGINS,
        )
        stack.callback(stop, gateway.proc)
        wait_until(
            lambda: httpx.get(f"{gateway.url}/readyz", timeout=5).status_code == 200,
            60,
            0.1,
            "gateway readiness",
        )
        yield FuzzStack(gateway, _seed(gateway))
