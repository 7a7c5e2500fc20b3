"""Request ids and errors without internals: every response carries `x-request-id`, the same id
travels upstream as gRPC metadata and is on the gateway's log lines for the request; a 5xx
says what failed in plain words with that id, never an exception's text or an address."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi import Request
from starlette.responses import Response
from support import SERVICE_SECRET

from gateway_stack import KEY_A, MODEL_NAME, Gateway, start_gateway, stop
from loomstack.inference.v1 import models_pb2, models_pb2_grpc
from loomstack_gateway.app import create_app
from loomstack_gateway.settings import GatewaySettings
from loomstack_kit.identity import REQUEST_ID_KEY, IdentityVerifier

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")
# What gRPC's own status text and server internals look like; none may reach a client.
INTERNALS = re.compile(r"ipv4|ipv6|127\.0\.0\.1|failed to connect|Traceback|/srv/|RuntimeError")


def request_id(resp: httpx.Response) -> str:
    value = resp.headers["x-request-id"]
    assert REQUEST_ID.fullmatch(value), value
    return value


def log_records(gateway: Gateway) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")
    ]


def test_every_response_carries_a_fresh_request_id(gateway: Gateway) -> None:
    http, anonymous = gateway.http(), gateway.http(None)
    responses = [
        anonymous.get("/healthz"),  # 200, open path
        anonymous.get("/v1/models"),  # 401
        http.get("/v1/models"),  # 200 through the inference service
        http.get("/v1/batches/batch_nope"),  # 404 from the service
        http.get("/v1/nothing-here"),  # 404 unknown route
        http.post("/v1/batches", json={}),  # 400 request validation
    ]
    assert [r.status_code for r in responses] == [200, 401, 200, 404, 404, 400]
    ids = [request_id(r) for r in responses]
    assert len(set(ids)) == len(ids)
    # Never the client's own: a caller-chosen id could collide or forge log lines.
    resp = http.get("/v1/models", headers={"x-request-id": "req_mine"})
    assert request_id(resp) != "req_mine"


class RecordingModels(models_pb2_grpc.ModelServiceServicer):
    """A real gRPC ModelService that records the metadata of each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append(dict(context.invocation_metadata()))
        return models_pb2.ListModelsResponse()


@pytest.fixture()
def recording_upstream() -> Iterator[tuple[str, RecordingModels]]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = RecordingModels()
    models_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


def test_the_request_id_travels_upstream_with_the_signed_identity(
    tmp_path: Path, recording_upstream: tuple[str, RecordingModels]
) -> None:
    address, servicer = recording_upstream
    gw = start_gateway(tmp_path, address, "recorded")
    try:
        resp = gw.http(KEY_A).get("/v1/models")
    finally:
        stop(gw.proc)
    assert resp.status_code == 200, resp.text
    (metadata,) = servicer.calls
    assert metadata[REQUEST_ID_KEY] == request_id(resp)
    # The id rides beside the identity, which still verifies.
    identity = IdentityVerifier(SERVICE_SECRET.encode()).verify(list(metadata.items()))
    assert identity.project == "team-a"


def test_an_unreachable_service_is_plain_words_and_the_id(dead_gateway: Gateway) -> None:
    http = dead_gateway.http()
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
    for resp in (
        http.post("/v1/chat/completions", json=chat),
        http.post("/v1/chat/completions", json={**chat, "stream": True}),
        http.get("/v1/batches"),
    ):
        assert resp.status_code == 503, resp.text
        rid = request_id(resp)
        error = resp.json()["error"]
        assert error["type"] == "server_error"
        assert error["message"].endswith(f"service is unavailable; retry later (request id {rid})")
        assert not INTERNALS.search(resp.text), resp.text
    # The detail is in the log, under the id the client was given.
    logged = [r for r in log_records(dead_gateway) if r.get("request_id") == rid]
    assert any("failed to connect" in r.get("detail", "") for r in logged), logged
    assert error["message"].startswith("the inference service")


def test_readyz_says_not_ready_without_the_address(dead_gateway: Gateway) -> None:
    resp = dead_gateway.http(None).get("/readyz")
    assert resp.status_code == 503
    rid = request_id(resp)
    error = resp.json()["error"]
    assert error == {
        "message": f"the inference service is not ready (request id {rid})",
        "type": "server_error",
        "param": None,
        "code": "not_ready",
    }
    logged = [r for r in log_records(dead_gateway) if r.get("request_id") == rid]
    assert any("UNAVAILABLE" in r.get("why", "") for r in logged), logged


def test_errors_a_service_raised_on_purpose_keep_their_message(gateway: Gateway) -> None:
    # The api-only inference service has no engine: its own Unavailable, with its reason code.
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
    resp = gateway.http().post("/v1/chat/completions", json=chat)
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "engine_not_ready"
    assert "(request id" not in error["message"] and MODEL_NAME in error["message"]


async def test_an_unexpected_exception_is_an_id_not_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(GatewaySettings(api_keys="sk-unit:team-u", api_key=""))

    @app.get("/v1/boom/{name}")  # a direct route (path parameters only)
    async def boom(name: str) -> Response:
        raise RuntimeError(f"cannot open /srv/secret/{name} on 10.1.2.3:5432")

    @app.get("/v1/boom-query")  # a route FastAPI serves (a query parameter)
    async def boom_query(request: Request, q: str = "") -> Response:
        raise RuntimeError("cannot open /srv/secret on 10.1.2.3:5432")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for path in ("/v1/boom/x", "/v1/boom-query?q=1"):
            resp = await http.get(path, headers={"Authorization": "Bearer sk-unit"})
            assert resp.status_code == 500
            rid = request_id(resp)
            assert resp.json()["error"] == {
                "message": f"internal error (request id {rid})",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
            assert "10.1.2.3" not in resp.text and not INTERNALS.search(resp.text)
            # The traceback is logged under the same id.
            records = [r for r in caplog.records if getattr(r, "request_id", None) == rid]
            assert any(r.exc_info and "10.1.2.3" in str(r.exc_info[1]) for r in records)
