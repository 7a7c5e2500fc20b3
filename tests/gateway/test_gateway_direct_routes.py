"""The direct-route layer: which routes skip FastAPI's request handling, and that a request gets
the same answer (status, body, error shape) whichever way it is served."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from fastapi.security import SecurityScopes
from packaging.requirements import Requirement
from starlette.requests import HTTPConnection
from starlette.responses import Response

from loomstack_gateway import direct_routes
from loomstack_gateway.app import create_app
from loomstack_gateway.direct_routes import (
    VERIFIED_WITH,
    DirectRouteError,
    DirectRoutes,
    check_direct_routes,
    why_not_direct,
)
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
    @direct_routes.direct
    async def get_item(request: Request, item_id: str) -> Response:
        return OrjsonResponse({"id": item_id, "path": request.url.path, "via": served_by(request)})

    @router.delete("/{item_id}/tags/{tag:path}")
    @direct_routes.direct
    async def delete_tag(request: Request, item_id: str, tag: str) -> Response:
        params = dict(request.path_params)
        return OrjsonResponse(
            {"item": item_id, "tag": tag, "params": params, "via": served_by(request)}
        )

    @router.get("/{item_id}/missing")
    @direct_routes.direct
    async def missing(item_id: str) -> Response:
        raise NotFound(f"no item {item_id!r}", code="item_not_found", param="item_id")

    @router.get("/{item_id}/broken")
    @direct_routes.direct
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
    @direct_routes.direct
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


def test_only_marked_routes_are_direct() -> None:
    """Opt-in: a route the layer could serve stays with FastAPI unless it is marked."""
    app = FastAPI()

    @app.get("/v1/plain/{name}")
    async def plain(request: Request, name: str) -> Response:
        return OrjsonResponse({"name": name})

    @app.get("/v1/marked/{name}")
    @direct_routes.direct
    async def marked(request: Request, name: str) -> Response:
        return OrjsonResponse({"name": name})

    assert why_not_direct(app.routes[-2]) is None
    assert not served_directly(app, "GET", "/v1/plain/x")
    assert served_directly(app, "GET", "/v1/marked/x")


def test_the_gateway_marks_only_its_polled_routes() -> None:
    app = create_app(GatewaySettings(api_keys="sk-t:default"))
    marked = {
        (method, route.path)
        for route in check_direct_routes(app.routes)
        for method in route.methods or ()
    }
    assert marked == {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/v1/batches/{batch_id}"),
        ("GET", "/v1/files/{file_id}"),
        ("GET", "/v1/files/{file_id}/content"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id:path}"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/fine_tuning/jobs/{job_id}"),
        ("GET", "/v1/comparisons/{comparison_id}"),
        ("GET", "/v1/curation/schemas"),
        ("GET", "/v1/curation/imports/{batch_id}"),
        ("GET", "/v1/curation/snapshots/{snapshot_id}"),
    }
    # Unmarked routes the layer could serve go through FastAPI.
    assert not served_directly(app, "POST", "/v1/batches/batch_abc/cancel")
    assert not served_directly(app, "DELETE", "/v1/files/file-abc")


def _with_marked(endpoint: Any, path: str = "/v1/things/{name}") -> FastAPI:
    app = FastAPI()
    app.add_api_route(path, direct_routes.direct(endpoint), methods=["GET"])
    return app


async def _takes_response(request: Request, name: str, response: Response) -> Response:
    return response


async def _takes_background(name: str, tasks: BackgroundTasks) -> Response:
    return Response()


async def _takes_connection(name: str, connection: HTTPConnection) -> Response:
    return Response()


async def _takes_scopes(name: str, scopes: SecurityScopes) -> Response:
    return Response()


async def _takes_query(name: str, limit: int = 3) -> Response:
    return Response()


async def _takes_dependency(name: str, dep: str = Depends(lambda: "x")) -> Response:
    return Response()


async def _takes_int(name: int) -> Response:
    return Response()


def _not_a_coroutine(name: str) -> Response:
    return Response()


@pytest.mark.parametrize(
    ("endpoint", "path", "reason"),
    [
        (_takes_response, "/v1/things/{name}", "takes FastAPI's Response ('response')"),
        (_takes_background, "/v1/things/{name}", "takes BackgroundTasks ('tasks')"),
        (_takes_connection, "/v1/things/{name}", "takes an HTTPConnection ('connection')"),
        (_takes_scopes, "/v1/things/{name}", "takes SecurityScopes ('scopes')"),
        (_takes_query, "/v1/things/{name}", "has parameters FastAPI must parse"),
        (_takes_dependency, "/v1/things/{name}", "has parameters FastAPI must parse"),
        (_takes_int, "/v1/things/{name}", "path parameter 'name' is not a str"),
        (_not_a_coroutine, "/v1/things/{name}", "the endpoint is not a coroutine function"),
        (_takes_int, "/v1/{name}", "path parameter 'name' is not a str"),
        (_takes_scopes, "/{name}/x", "takes SecurityScopes"),
    ],
)
def test_a_marked_route_the_layer_cannot_serve_stops_the_app(
    endpoint: Any, path: str, reason: str
) -> None:
    app = _with_marked(endpoint, path)
    with pytest.raises(DirectRouteError) as refused:
        check_direct_routes(app.routes)
    message = str(refused.value)
    assert path in message and endpoint.__qualname__ in message and reason in message, message
    with pytest.raises(DirectRouteError):
        DirectRoutes(app, fastapi_app=app)


def test_a_marked_route_with_a_parameter_in_the_first_two_segments_is_refused() -> None:
    async def top(request: Request, name: str) -> Response:
        return Response()

    with pytest.raises(DirectRouteError, match="within the first two path segments"):
        check_direct_routes(_with_marked(top, "/v1/{name}").routes)


def test_fastapi_and_starlette_are_the_minors_the_layer_was_verified_with() -> None:
    """The layer calls endpoints as FastAPI would, so a new FastAPI or Starlette minor must be
    checked again (and VERIFIED_WITH, the gateway's pins and this test moved with it)."""
    installed = {name: ".".join(version(name).split(".")[:2]) for name in VERIFIED_WITH}
    assert installed == VERIFIED_WITH
    pyproject = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "services/gateway/pyproject.toml").read_text()
    )
    pins = {
        Requirement(r).name: Requirement(r).specifier for r in pyproject["project"]["dependencies"]
    }
    for name, minor in VERIFIED_WITH.items():
        major, low = minor.split(".")
        spec = pins[name]
        assert f"{minor}.0" in spec and f"{major}.{int(low) + 1}.0" not in spec, (name, spec)
        assert f"{major}.{int(low) - 1}.99" not in spec, (name, spec)
