"""Per-key limits on real gateway processes: requests per minute (in memory and shared through
the machine's real Redis) and requests in flight; 429 in OpenAI's shape with Retry-After."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from gateway_stack import (
    Gateway,
    free_port,
    http_flood,
    poll,
    request_head,
    start_gateway,
    stop,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
KEYS = {
    "sk-rate-1": "team-a",
    "sk-rate-2": "team-b",
    "sk-rate-3": "team-c",
    "sk-rate-admin": "*",
    "sk-busy": "team-d",
    "sk-calm": "team-e",
}
KEY_LIST = ",".join(f"{k}:{p}" for k, p in KEYS.items())


def limited_gateway(tmp: Path, inference: str, name: str, **env: str) -> Gateway:
    return start_gateway(tmp, inference, name, LOOMSTACK_GATEWAY_API_KEYS=KEY_LIST, **env)


@pytest.fixture(scope="module")
def rate_gateway(
    tmp_path_factory: pytest.TempPathFactory, inference_address: str
) -> Iterator[Gateway]:
    """Five requests per minute per key, no concurrency limit."""
    gw = limited_gateway(
        tmp_path_factory.mktemp("rate"),
        inference_address,
        "rate",
        LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE="5",
        LOOMSTACK_GATEWAY_CONCURRENCY_LIMIT="0",
    )
    try:
        yield gw
    finally:
        stop(gw.proc)


def get_models(gateway: Gateway, key: str, n: int) -> list[tuple[int, dict[str, str]]]:
    heads = [request_head("GET", "/v1/models", key)] * n
    return asyncio.run(http_flood(gateway.url, heads, connections=1))


def assert_rate_limited(status: int, headers: dict[str, str], body: dict[str, object]) -> None:
    assert status == 429
    assert body == {
        "error": {
            "message": body["error"]["message"],  # type: ignore[index]
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert 1 <= int(headers["retry-after"]) <= 60
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])


def test_over_the_rate_a_key_gets_429_with_retry_after(rate_gateway: Gateway) -> None:
    statuses = [status for status, _ in get_models(rate_gateway, "sk-rate-1", 5)]
    assert statuses == [200] * 5
    resp = rate_gateway.http("sk-rate-1").get("/v1/models")
    assert_rate_limited(resp.status_code, dict(resp.headers), resp.json())
    message = resp.json()["error"]["message"]
    assert "at most 5 requests per minute per API key" in message
    assert f"retry in {resp.headers['retry-after']} s" in message
    # Another key of the same gateway is untouched.
    assert rate_gateway.http("sk-rate-2").get("/v1/models").status_code == 200


def test_admin_keys_are_limited_like_any_key(rate_gateway: Gateway) -> None:
    statuses = [status for status, _ in get_models(rate_gateway, "sk-rate-admin", 7)]
    assert statuses == [200] * 5 + [429] * 2


def test_open_paths_and_refused_keys_are_not_counted(rate_gateway: Gateway) -> None:
    http = rate_gateway.http(None)
    assert {http.get(path).status_code for path in ["/healthz", "/metrics"] * 10} == {200}
    # Wrong keys are refused by auth (401) before any limit: they use no one's budget.
    assert {
        http.get("/v1/models", headers={"Authorization": "Bearer sk-nope"}).status_code
        for _ in range(8)
    } == {401}
    statuses = [status for status, _ in get_models(rate_gateway, "sk-rate-3", 5)]
    assert statuses == [200] * 5


@pytest.fixture(scope="module")
def busy_gateway(
    tmp_path_factory: pytest.TempPathFactory, inference_address: str
) -> Iterator[Gateway]:
    """At most two requests in flight per key; no rate limit."""
    gw = limited_gateway(
        tmp_path_factory.mktemp("busy"),
        inference_address,
        "busy",
        LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE="0",
        LOOMSTACK_GATEWAY_CONCURRENCY_LIMIT="2",
    )
    try:
        yield gw
    finally:
        stop(gw.proc)


def start_slow_upload(gateway: Gateway, key: str) -> socket.socket:
    """An upload whose body is still arriving: a request in flight until the socket closes."""
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        request_head(
            "POST",
            "/v1/files",
            key,
            length=10_000_000,
            content_type="multipart/form-data; boundary=XyZ",
        )
        + b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        + b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        + b"{}\n" * 1000
    )
    return sock


def test_requests_in_flight_are_limited_per_key(busy_gateway: Gateway) -> None:
    http = busy_gateway.http("sk-busy")
    with ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(start_slow_upload(busy_gateway, "sk-busy"))
        resp = poll(lambda: http.get("/v1/models"), lambda r: r.status_code == 429)
        error = resp.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert "at most 2 requests of one API key may be in flight" in error["message"]
        assert resp.headers["retry-after"] == "1"
        # Another key is not held up by the busy one.
        assert busy_gateway.http("sk-calm").get("/v1/models").status_code == 200
    # The uploads' connections are gone: their slots are free again.
    poll(lambda: http.get("/v1/models"), lambda r: r.status_code == 200)


def test_a_flood_from_one_key_leaves_other_keys_served(
    tmp_path: Path, inference_address: str
) -> None:
    """A bounded loopback flood (3,000 requests, 64 connections at once) from one key against
    the defaults (600 per minute, 32 in flight), while another key makes its own requests."""
    gw = limited_gateway(tmp_path, inference_address, "flood")
    try:
        flood = [request_head("GET", "/v1/models", "sk-busy")] * 3000
        calm = [request_head("GET", "/v1/models", "sk-calm")] * 200

        async def both() -> tuple[
            list[tuple[int, dict[str, str]]], list[tuple[int, dict[str, str]]]
        ]:
            return await asyncio.gather(
                http_flood(gw.url, flood, connections=64), http_flood(gw.url, calm, connections=4)
            )

        flooded, served = asyncio.run(both())
    finally:
        stop(gw.proc)
    counts = Counter(status for status, _ in flooded)
    assert set(counts) <= {200, 429}, counts
    assert counts[200] <= 600 and counts[429] >= 2400, counts
    assert all(1 <= int(h["retry-after"]) <= 60 for s, h in flooded if s == 429)
    assert Counter(status for status, _ in served) == {200: 200}


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test alone in the machine's Redis; its keys are removed after."""
    prefix = f"loomstack-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def test_a_redis_limit_holds_across_two_gateways(
    tmp_path: Path, inference_address: str, redis_prefix: str
) -> None:
    shared = {
        "LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE": "20",
        "LOOMSTACK_GATEWAY_RATE_LIMIT_STORAGE": REDIS_URL,
        "LOOMSTACK_GATEWAY_RATE_LIMIT_KEY_PREFIX": redis_prefix,
    }
    one = limited_gateway(tmp_path, inference_address, "replica-1", **shared)
    two = limited_gateway(tmp_path, inference_address, "replica-2", **shared)
    try:
        heads = [request_head("GET", "/v1/models", "sk-rate-1")] * 30

        async def both() -> list[list[tuple[int, dict[str, str]]]]:
            return await asyncio.gather(
                http_flood(one.url, heads, connections=8), http_flood(two.url, heads, connections=8)
            )

        first, second = asyncio.run(both())
        other = two.http("sk-rate-2").get("/v1/models").status_code
    finally:
        stop(one.proc)
        stop(two.proc)
    admitted = [sum(s == 200 for s, _ in answers) for answers in (first, second)]
    # 60 requests over both replicas, 20 admitted in all: the window is one, in Redis.
    assert sum(admitted) == 20, admitted
    assert all(n > 0 for n in admitted), admitted
    assert other == 200
    assert redis.Redis.from_url(REDIS_URL).keys(f"{redis_prefix}*")


def test_with_redis_down_requests_are_admitted_and_a_warning_logged(
    tmp_path: Path, inference_address: str
) -> None:
    gw = limited_gateway(
        tmp_path,
        inference_address,
        "no-redis",
        LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE="2",
        LOOMSTACK_GATEWAY_CONCURRENCY_LIMIT="2",
        LOOMSTACK_GATEWAY_RATE_LIMIT_STORAGE=f"redis://:pw-s3cret@127.0.0.1:{free_port()}/0",
    )
    try:
        statuses = [status for status, _ in get_models(gw, "sk-rate-1", 6)]
        warned = poll(gw.log.read_text, lambda text: "the rate limit store failed" in text)
        # The concurrency limit still holds while the store is down.
        with ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(start_slow_upload(gw, "sk-busy"))
            busy = poll(
                lambda: gw.http("sk-busy").get("/v1/models"), lambda r: r.status_code == 429
            )
    finally:
        stop(gw.proc)
    assert statuses == [200] * 6
    assert "at most 2 requests of one API key may be in flight" in busy.json()["error"]["message"]
    # Once per 5 s of failing, not once a request.
    assert warned.count("the rate limit store failed") == 1
    log = gw.log.read_text()
    assert "pw-s3cret" not in log
    assert "Traceback" not in log
