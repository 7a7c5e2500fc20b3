"""Fixtures for the gateway tests: the real inference service (api role) and the real gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from gateway_stack import (
    KEY_A,
    START_TIMEOUT,
    Gateway,
    free_port,
    start_gateway,
    start_inference,
    stop,
)


@pytest.fixture(scope="session")
def inference_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The inference service, api role only, on an ephemeral port."""
    address, proc = start_inference(tmp_path_factory.mktemp("inference-home"))
    try:
        yield address
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, inference_address: str) -> Iterator[Gateway]:
    """The gateway in front of the inference service, ready."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), inference_address, "gateway")
    deadline = time.monotonic() + START_TIMEOUT
    while httpx.get(f"{gw.url}/readyz", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            stop(gw.proc)
            raise TimeoutError("the inference service never became ready")
        time.sleep(0.1)
    try:
        yield gw
    finally:
        stop(gw.proc)


@pytest.fixture(scope="session")
def dead_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose inference service does not exist."""
    gw = start_gateway(
        tmp_path_factory.mktemp("dead-gateway"), f"127.0.0.1:{free_port()}", "dead-gateway"
    )
    try:
        yield gw
    finally:
        stop(gw.proc)


@pytest.fixture()
def client(gateway: Gateway) -> OpenAI:
    """The openai client with project team-a's key."""
    return gateway.client(KEY_A)
