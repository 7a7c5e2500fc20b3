"""The ConquestService over a real in-process grpc.aio server (port 0, the kit's identity and
error interceptors), and the plugin's HTTP routes over it as the gateway mounts them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from aris_support import CurationContextStandIn, candidate_answer, run_batch
from fastapi import FastAPI, Request

from loomstack.aris.v1 import conquests_pb2 as pb
from loomstack.aris.v1 import conquests_pb2_grpc
from loomstack_aris.plugin import plugin
from loomstack_gateway.http_errors import install_error_handlers
from loomstack_kit.errors import from_rpc_error
from loomstack_kit.identity import IdentitySigner
from loomstack_kit.server import GrpcServer
from loomstack_kit.settings import ServiceSettings


@dataclass
class Service:
    channel: grpc.aio.Channel
    signer: IdentitySigner
    host: CurationContextStandIn

    def stub(self) -> Any:
        return conquests_pb2_grpc.ConquestServiceStub(self.channel)

    def md(self, project: str | None) -> Any:
        return self.signer.metadata(project)


@pytest_asyncio.fixture
async def service(host: CurationContextStandIn) -> AsyncIterator[Service]:
    secret = secrets.token_hex(16)
    settings = ServiceSettings(host="127.0.0.1", port=0, drain_seconds=0, service_secret=secret)
    assert plugin.grpc_services is not None
    registrations = plugin.grpc_services(host)
    assert [r.full_name for r in registrations] == ["loomstack.aris.v1.ConquestService"]
    server = GrpcServer(settings, registrations)
    await server.start()
    await server.set_ready(True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Service(channel, IdentitySigner(secret.encode(), "gateway"), host)
    await server.stop()


async def _error(call: Any) -> tuple[grpc.StatusCode, Any]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), from_rpc_error(raised.value)


async def test_create_get_list_over_grpc(service: Service) -> None:
    stub, md = service.stub(), service.md("p1")
    created = await stub.CreateConquest(
        pb.CreateConquestRequest(
            conquest=pb.Conquest(
                type=pb.CONQUEST_TYPE_CANDIDATE, title="Ada", philosopher="socrates@example.com"
            )
        ),
        metadata=md,
    )
    assert created.id.startswith("conq_") and created.project == "p1"
    assert created.status == pb.CONQUEST_STATUS_DRAFT
    assert created.result == pb.CONQUEST_RESULT_PENDING
    assert created.HasField("create_time") and not created.HasField("evaluate_time")
    got = await stub.GetConquest(pb.GetConquestRequest(conquest_id=created.id), metadata=md)
    assert got == created
    other = await stub.CreateConquest(
        pb.CreateConquestRequest(conquest=pb.Conquest(type=pb.CONQUEST_TYPE_CV_PARSING)),
        metadata=md,
    )
    page = await stub.ListConquests(pb.ListConquestsRequest(page_size=1), metadata=md)
    assert [c.id for c in page.conquests] == [other.id] and page.next_page_token == other.id
    rest = await stub.ListConquests(
        pb.ListConquestsRequest(page_size=1, page_token=page.next_page_token), metadata=md
    )
    assert [c.id for c in rest.conquests] == [created.id] and rest.next_page_token == ""
    only = await stub.ListConquests(
        pb.ListConquestsRequest(type=pb.CONQUEST_TYPE_CV_PARSING), metadata=md
    )
    assert [c.id for c in only.conquests] == [other.id]
    health = await stub.GetArisHealth(pb.GetArisHealthRequest(), metadata=md)
    assert health.database_reachable and health.conquests == 2


async def test_another_project_gets_not_found(service: Service) -> None:
    stub = service.stub()
    created = await stub.CreateConquest(
        pb.CreateConquestRequest(conquest=pb.Conquest(type=pb.CONQUEST_TYPE_CUSTOM)),
        metadata=service.md("p1"),
    )
    theirs = service.md("p2")
    for call in (
        stub.GetConquest(pb.GetConquestRequest(conquest_id=created.id), metadata=theirs),
        stub.AnnotateConquest(
            pb.AnnotateConquestRequest(conquest_id=created.id, rating=3), metadata=theirs
        ),
        stub.SetConquestResult(
            pb.SetConquestResultRequest(conquest_id=created.id, result=pb.CONQUEST_RESULT_VICTORY),
            metadata=theirs,
        ),
    ):
        code, error = await _error(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert error.param == "conquest_id" and created.id in error.message
    listed = await stub.ListConquests(pb.ListConquestsRequest(), metadata=theirs)
    assert list(listed.conquests) == []
    admin = await stub.GetConquest(
        pb.GetConquestRequest(conquest_id=created.id), metadata=service.md(None)
    )
    assert admin.project == "p1"
    code, _ = await _error(stub.GetConquest(pb.GetConquestRequest(conquest_id=created.id)))
    assert code == grpc.StatusCode.UNAUTHENTICATED  # no signed identity, no conquest


async def test_bad_requests_name_the_field(service: Service) -> None:
    stub, md = service.stub(), service.md("p1")
    code, error = await _error(stub.CreateConquest(pb.CreateConquestRequest(), metadata=md))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and error.param == "type"
    assert "CANDIDATE" in error.message
    code, error = await _error(
        stub.CreateConquest(
            pb.CreateConquestRequest(conquest=pb.Conquest(type=99)),  # type: ignore[arg-type]
            metadata=md,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and error.param == "conquest.type"
    created = await stub.CreateConquest(
        pb.CreateConquestRequest(conquest=pb.Conquest(type=pb.CONQUEST_TYPE_CUSTOM)), metadata=md
    )
    code, error = await _error(
        stub.AnnotateConquest(
            pb.AnnotateConquestRequest(conquest_id=created.id, rating=9), metadata=md
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and error.param == "rating"
    code, error = await _error(
        stub.SetConquestResult(pb.SetConquestResultRequest(conquest_id=created.id), metadata=md)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and error.param == "result"


async def test_victory_sync_annotations_and_examples_over_grpc(service: Service) -> None:
    stub, md, host = service.stub(), service.md("p1"), service.host
    created = await stub.CreateConquest(
        pb.CreateConquestRequest(conquest=pb.Conquest(type=pb.CONQUEST_TYPE_CANDIDATE)),
        metadata=md,
    )
    run_batch(host, created.id, "batch_g1", [candidate_answer()])
    rating = await stub.AnnotateConquest(
        pb.AnnotateConquestRequest(conquest_id=created.id, rating=5, use_as_sample_response=True),
        metadata=md,
    )
    assert rating.rating == 5 and rating.include_in_training and rating.ls_task_id == 0
    won = await stub.SetConquestResult(
        pb.SetConquestResultRequest(
            conquest_id=created.id, result=pb.CONQUEST_RESULT_VICTORY, evaluated_by="ari"
        ),
        metadata=md,
    )
    assert won.result == pb.CONQUEST_RESULT_VICTORY and won.gold_sync_pending  # no tasks yet
    host.import_tasks("p1", "batch_g1", [501])
    counts = await stub.SyncVictories(pb.SyncVictoriesRequest(), metadata=md)
    assert (counts.synced, counts.waiting, counts.failed) == (1, 0, 0)
    assert host.set_gold_calls == [("p1", [501], True)]
    examples = await stub.ListIclExamples(
        pb.ListIclExamplesRequest(format=pb.ICL_EXAMPLE_FORMAT_TEXT), metadata=md
    )
    [example] = examples.examples
    assert example.conquest_id == created.id and example.type == pb.CONQUEST_TYPE_CANDIDATE
    assert "Output:" in example.text and list(example.messages) == []


# ---- the HTTP routes, as the gateway mounts them ------------------------------------------------


class RouteContextStandIn:
    """A stand-in for the gateway's RouteContext: its curation channel, signed identity of
    the caller's project (here: the `x-test-project` header)."""

    plugin = "aris"
    timeout = 10.0

    def __init__(self, service: Service) -> None:
        self.service = service

    def channel(self, name: str) -> Any:
        assert name == "curation"
        return self.service.channel

    def metadata(self, request: Request) -> Any:
        return self.service.md(request.headers.get("x-test-project", "p1"))


@pytest_asyncio.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    assert plugin.routes is not None
    app.include_router(
        plugin.routes.build(RouteContextStandIn(service)), prefix=plugin.route_prefix
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


async def test_routes_create_list_and_get(http: httpx.AsyncClient) -> None:
    made = []
    for kind in ("candidate", "EMAIL_RESPONSE", "Candidate"):
        resp = await http.post(
            "/v1/plugins/aris/conquests",
            json={"type": kind, "title": f"t-{kind}", "philosopher": "socrates@example.com"},
        )
        assert resp.status_code == 200, resp.text
        made.append(resp.json())
    first = made[0]
    assert first["object"] == "aris.conquest" and first["type"] == "CANDIDATE"
    assert first["status"] == "DRAFT" and first["result"] == "PENDING"
    assert isinstance(first["created_at"], int) and first["evaluated_at"] is None
    assert first["prompt"] == [] and first["batch_id"] is None

    page = (await http.get("/v1/plugins/aris/conquests", params={"limit": 2})).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [c["id"] for c in page["data"]] == [made[2]["id"], made[1]["id"]]
    assert page["first_id"] == made[2]["id"] and page["last_id"] == made[1]["id"]
    rest = (
        await http.get("/v1/plugins/aris/conquests", params={"limit": 2, "after": page["last_id"]})
    ).json()
    assert [c["id"] for c in rest["data"]] == [first["id"]] and rest["has_more"] is False
    filtered = (
        await http.get("/v1/plugins/aris/conquests", params={"type": "email_response"})
    ).json()
    assert [c["id"] for c in filtered["data"]] == [made[1]["id"]]
    got = await http.get(f"/v1/plugins/aris/conquests/{first['id']}")
    assert got.json() == first


async def test_routes_refuse_what_they_cannot_name(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/plugins/aris/conquests", json={"type": "DRAGON"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "type" and "DRAGON" in error["message"]
    assert "CANDIDATE" in error["message"] and "CUSTOM" in error["message"]
    resp = await http.post("/v1/plugins/aris/conquests", json={"type": "CUSTOM", "color": "red"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "color"
    unknown = "conq_" + "a" * 24
    resp = await http.get(f"/v1/plugins/aris/conquests/{unknown}")
    assert resp.status_code == 404
    assert (
        resp.json()["error"]["param"] == "conquest_id"
        and unknown in resp.json()["error"]["message"]
    )
    resp = await http.get("/v1/plugins/aris/conquests", params={"status": "SLEEPING"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "status"
    resp = await http.get("/v1/plugins/aris/icl_examples", params={"format": "xml"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "format"


async def test_routes_annotate_result_sync_examples_health(
    http: httpx.AsyncClient, service: Service
) -> None:
    cid = (await http.post("/v1/plugins/aris/conquests", json={"type": "CANDIDATE"})).json()["id"]
    run_batch(service.host, cid, "batch_h1", [candidate_answer()])
    service.host.import_tasks("p1", "batch_h1", [601])
    other = await http.get(f"/v1/plugins/aris/conquests/{cid}", headers={"x-test-project": "p2"})
    assert other.status_code == 404

    rated = await http.post(
        f"/v1/plugins/aris/conquests/{cid}/annotations",
        json={"rating": 4, "feedback": "solid", "use_as_sample_response": True},
    )
    assert rated.status_code == 200, rated.text
    body = rated.json()
    assert body["object"] == "aris.rating" and body["rating"] == 4 and body["ls_task_id"] is None
    bad = await http.post(f"/v1/plugins/aris/conquests/{cid}/annotations", json={"rating": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"

    won = await http.post(
        f"/v1/plugins/aris/conquests/{cid}/result",
        json={"result": "victory", "result_notes": "hire", "evaluated_by": "ari@example.com"},
    )
    assert won.status_code == 200, won.text
    assert won.json()["result"] == "VICTORY" and won.json()["gold_sync_pending"] is False
    assert service.host.set_gold_calls == [("p1", [601], True)]
    bad = await http.post(f"/v1/plugins/aris/conquests/{cid}/result", json={"result": "WIN"})
    assert bad.status_code == 400 and "VICTORY" in bad.json()["error"]["message"]

    sync = (await http.post("/v1/plugins/aris/sync/victories")).json()
    assert sync == {"object": "aris.victory_sync", "synced": 0, "waiting": 0, "failed": 0}
    examples = (
        await http.get("/v1/plugins/aris/icl_examples", params={"conquest_type": "candidate"})
    ).json()
    [example] = examples["data"]
    assert example["object"] == "aris.icl_example" and example["conquest_id"] == cid
    assert example["messages"][-1]["role"] == "assistant"
    health = (await http.get("/v1/plugins/aris/health")).json()
    assert health["object"] == "aris.health" and health["database_reachable"] is True
    assert (health["conquests"], health["victories"], health["ratings"]) == (1, 1, 1)
