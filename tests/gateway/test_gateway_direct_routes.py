"""The direct-route layer: which routes skip FastAPI's request handling, and that a request gets
the same answer (status, body, error shape) whichever way it is served."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from loomstack_gateway.app import create_app
from loomstack_gateway.direct_routes import DirectRoutes, why_not_direct
from loomstack_gateway.http_errors import install_error_handlers
from loomstack_gateway.responses import OrjsonResponse
from loomstack_gateway.settings import GatewaySettings
from loomstack_kit.errors import NotFound


def _no_id(content: bytes) -> bytes:
    return re.sub(rb"req_[0-9a-f]{32}", b"req_", content)


def served_by(request: Request) -> str:
    # FastAPI's request handling puts its exit stacks in the scope; the direct layer does not.
    return "fastapi" if "fastapi_inner_astack" in request.scope else "direct"


def make_app(*, direct: bool) -> FastAPI:
    """A small app with the gateway's error handlers, with or without the direct layer."""
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(prefix="/v1/items")

    @router.get("")
    async def list_items(request: Request, limit: int = 3) -> Response:
        return OrjsonResponse({"limit": limit, "via": served_by(request)})

    # An earlier literal route FastAPI tries first, before the direct-eligible `/{item_id}`.
    @router.get("/special")
    async def special(request: Request, flag: bool = False) -> Response:
        return OrjsonResponse({"special": flag, "via": served_by(request)})

    @router.get("/{item_id}")
    async def get_item(request: Request, item_id: str) -> Response:
        return OrjsonResponse({"id": item_id, "path": request.url.path, "via": served_by(request)})

    @router.delete("/{item_id}/tags/{tag:path}")
    async def delete_tag(request: Request, item_id: str, tag: str) -> Response:
        params = dict(request.path_params)
        return OrjsonResponse(
            {"item": item_id, "tag": tag, "params": params, "via": served_by(request)}
        )

    @router.get("/{item_id}/missing")
    async def missing(item_id: str) -> Response:
        raise NotFound(f"no item {item_id!r}", code="item_not_found", param="item_id")

    @router.get("/{item_id}/broken")
    async def broken(item_id: str) -> Response:
        raise RuntimeError("boom")

    @router.get("/{item_id}/count/{n}")
    async def count(item_id: str, n: int) -> Response:
        return OrjsonResponse({"n": n})

    # An earlier route FastAPI tries first shadows a later, direct-eligible one.
    @router.get("/shadow/{name}")
    async def shadow_first(request: Request, name: str, suffix: str = "") -> Response:
        return OrjsonResponse({"first": name + suffix, "via": served_by(request)})

    @router.get("/shadow/{other}", include_in_schema=False)
    async def shadow_second(request: Request, other: str) -> Response:
        return OrjsonResponse({"second": other})

    app.include_router(router)
    if direct:
        app.add_middleware(DirectRoutes, fastapi_app=app)
    return app


def eligible(app: FastAPI) -> set[tuple[str, str]]:
    """(method, template) of the routes the layer may serve."""
    return {
        (method, route.path)
        for route in app.routes
        if why_not_direct(route) is None
        for method in getattr(route, "methods", ())
    }


def served_directly(app: FastAPI, method: str, path: str) -> bool:
    layer = DirectRoutes(app, fastapi_app=app)
    return layer.find({"type": "http", "method": method, "path": path, "root_path": ""}) is not None


def test_only_path_only_routes_are_direct() -> None:
    app = make_app(direct=False)
    assert eligible(app) == {
        ("GET", "/v1/items/{item_id}"),
        ("DELETE", "/v1/items/{item_id}/tags/{tag:path}"),
        ("GET", "/v1/items/{item_id}/missing"),
        ("GET", "/v1/items/{item_id}/broken"),
        ("GET", "/v1/items/shadow/{other}"),
    }
    assert served_directly(app, "GET", "/v1/items/abc")
    # FastAPI's order holds: an earlier route that matches first keeps the request.
    assert not served_directly(app, "GET", "/v1/items/special")
    assert not served_directly(app, "GET", "/v1/items/shadow/x")
    assert not served_directly(app, "POST", "/v1/items/abc")


def test_the_gateways_polled_reads_are_direct() -> None:
    app = create_app(GatewaySettings(api_keys="sk-t:default"))
    for method, path in [
        ("GET", "/v1/batches/batch_abc"),
        ("GET", "/v1/files/file-abc"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-abc"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/healthz"),
    ]:
        assert served_directly(app, method, path), path
    # Query parameters (pagination) need FastAPI's validation.
    assert not served_directly(app, "GET", "/v1/batches")
    assert not served_directly(app, "GET", "/v1/fine_tuning/jobs/ftjob-abc/events")


async def call(app: FastAPI, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path)


def without_via(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: v for k, v in doc.items() if k != "via"}
    return doc


@pytest.mark.parametrize(
    ("method", "path", "via"),
    [
        ("GET", "/v1/items/abc", "direct"),
        ("GET", "/v1/items?limit=5", "fastapi"),
        ("GET", "/v1/items?limit=nope", None),
        ("DELETE", "/v1/items/abc/tags/a/b%2Fc", "direct"),
        ("GET", "/v1/items/abc/missing", None),
        ("GET", "/v1/items/abc/broken", None),
        ("GET", "/v1/items/abc/count/7", None),
        ("GET", "/v1/items/abc/count/seven", None),
        ("GET", "/v1/items/shadow/x?suffix=!", "fastapi"),
        ("GET", "/v1/items/shadow/x", "fastapi"),
        ("GET", "/v1/items/special?flag=true", "fastapi"),
        ("GET", "/v1/items/special", "fastapi"),
        ("POST", "/v1/items/abc", None),
        ("GET", "/v1/nothing/here", None),
    ],
)
async def test_same_answer_with_and_without_the_layer(
    method: str, path: str, via: str | None
) -> None:
    plain = await call(make_app(direct=False), method, path)
    layered = await call(make_app(direct=True), method, path)
    assert layered.status_code == plain.status_code
    assert layered.headers["content-type"] == plain.headers["content-type"]
    if via is None:
        # Alike but for the request id a 500 names (each request has its own).
        assert _no_id(layered.content) == _no_id(plain.content)
    else:
        assert without_via(layered.json()) == without_via(plain.json())
        assert layered.json()["via"] == via


async def test_errors_keep_the_openai_shape() -> None:
    missing = await call(make_app(direct=True), "GET", "/v1/items/abc/missing")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "no item 'abc'",
        "type": "invalid_request_error",
        "param": "item_id",
        "code": "item_not_found",
    }
    broken = await call(make_app(direct=True), "GET", "/v1/items/abc/broken")
    assert broken.status_code == 500
    message = broken.json()["error"]["message"]
    assert re.fullmatch(r"internal error \(request id req_[0-9a-f]{32}\)", message), message


async def test_path_parameters_reach_the_endpoint_and_the_request() -> None:
    resp = await call(make_app(direct=True), "DELETE", "/v1/items/abc/tags/a/b")
    assert resp.json() == {
        "item": "abc",
        "tag": "a/b",
        "params": {"item_id": "abc", "tag": "a/b"},
        "via": "direct",
    }
