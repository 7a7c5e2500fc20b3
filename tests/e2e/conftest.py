"""The shared full stack: ONE inference service with a real vLLM engine and one gateway.

Every end-to-end test uses this one engine, so the test run pays for a single engine start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway.gateway_stack import KEY_A, Gateway, start_gateway, stop
from openai import OpenAI
from support import InferenceProcess

ONLINE_LIMIT = 4


@dataclass
class Stack:
    """The running stack."""

    inference: InferenceProcess
    gateway: Gateway
    # The engine's LOOMSTACK_INFERENCE_MAX_ONLINE_REQUESTS.
    online_limit: int = ONLINE_LIMIT

    def client(self, key: str = KEY_A) -> OpenAI:
        return OpenAI(base_url=self.gateway.base_url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Inference (api + engine roles, SQLite, local blobs) behind the gateway."""
    home: Path = tmp_path_factory.mktemp("stack")
    inference = InferenceProcess(
        home,
        env={
            "LOOMSTACK_INFERENCE_SHARD_LINES": "50",
            # Adapters are served (routing and ownership tests), and the online queue is short
            # enough for a test to fill it.
            "LOOMSTACK_INFERENCE_MAX_LORA_RANK": "8",
            # Adapters on an engine of their own, as a compiled CPU engine serves them (the
            # tests' engines run eager, where `auto` would share one engine).
            "LOOMSTACK_INFERENCE_LORA_ENGINE": "separate",
            "LOOMSTACK_INFERENCE_MAX_ONLINE_REQUESTS": str(ONLINE_LIMIT),
        },
    ).start()
    gateway = start_gateway(home, inference.address, "gateway")
    try:
        inference.wait_ready()
        yield Stack(inference, gateway)
    finally:
        stop(gateway.proc)
        inference.terminate()


@pytest.fixture
def api_replica(stack: Stack, tmp_path: Path) -> Iterator[InferenceProcess]:
    """An api-role replica (no engine) on the stack's database: it forwards chat to the engine
    it finds in the registry."""
    shared_db = stack.inference.home / "inference.db"
    api = InferenceProcess(
        tmp_path / "api-only",
        roles="api",
        name="api-only",
        env={"LOOMSTACK_INFERENCE_DATABASE_URL": f"sqlite:///{shared_db}"},
    )
    try:
        yield api.start().wait_ready(60)
    finally:
        api.terminate()
