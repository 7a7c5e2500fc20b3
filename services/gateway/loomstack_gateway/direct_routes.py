"""Routes that take only the request and string path parameters, dispatched without FastAPI's
per-request machinery.

Such a route gains nothing from FastAPI's request handling: there is nothing to validate or
inject. Yet that handling (Starlette's linear scan over ~50 routes, dependency solving, two
`AsyncExitStack`s and the exception wrappers) cost about 0.2 ms of CPU per request on the bench
machine, as much as the rest of the gateway's work on `GET /v1/batches/{id}`. This ASGI layer
finds such a route with one dict lookup (by the path's first two segments, then the route's own
compiled pattern), calls its endpoint with the same arguments FastAPI would pass, and renders
its errors with the app's exception handlers. Every other request goes on to FastAPI.

The routes stay ordinary FastAPI routes: one endpoint function, one OpenAPI entry. The layer sits
inside the auth and metrics middleware, so both apply to every request either way.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.convertors import PathConvertor, StringConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]
# The path parameter convertors that pass the matched text through unchanged.
_TEXT_CONVERTORS = (StringConvertor, PathConvertor)


@dataclass(frozen=True)
class DirectRoute:
    """A route the layer serves: its FastAPI route, the endpoint and its argument names."""

    route: APIRoute
    request_arg: str | None
    path_args: tuple[str, ...]


def _bucket(path: str) -> str:
    """The first two segments of a path: `/v1/batches/abc` → `/v1/batches`."""
    parts = path.split("/", 3)
    return "/".join(parts[:3])


def _template_bucket(template: str) -> str | None:
    """The bucket of every path a template matches, or None when a parameter comes too early."""
    bucket = _bucket(template)
    return None if "{" in bucket else bucket


def _probe(template: str) -> str:
    """A concrete path the template matches (each parameter replaced by `probe`)."""
    out: list[str] = []
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        _, _, rest = tail.partition("}")
        out.extend((head, "probe"))
    out.append(rest)
    return "".join(out)


def why_not_direct(route: BaseRoute) -> str | None:
    """None when the layer may serve `route`; otherwise the reason it stays with FastAPI."""
    if not isinstance(route, APIRoute):
        return "not an APIRoute"
    dependant = route.dependant
    if (
        dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.dependencies
    ):
        return "has parameters FastAPI must parse or dependencies it must solve"
    if not inspect.iscoroutinefunction(route.endpoint):
        return "the endpoint is not a coroutine function"
    if route.response_model is not None:
        return "has a response model"
    for param in dependant.path_params:
        if param.field_info.annotation is not str:
            return f"path parameter {param.name!r} is not a str"
    for name, convertor in route.param_convertors.items():
        if not isinstance(convertor, _TEXT_CONVERTORS):
            return f"path parameter {name!r} uses a converting convertor"
    if _template_bucket(route.path) is None:
        return "a parameter within the first two path segments"
    return None


def direct_table(routes: list[BaseRoute]) -> dict[str, list[DirectRoute]]:
    """Bucket → the routes the layer serves, in the app's order.

    A route stays with FastAPI when an earlier route FastAPI would try first also matches it
    (checked on a probe path), so the layer never answers a request FastAPI would have given to
    another route.
    """
    table: dict[str, list[DirectRoute]] = {}
    earlier: list[BaseRoute] = []
    for route in routes:
        reason = why_not_direct(route)
        if reason is None:
            assert isinstance(route, APIRoute)
            probe = {"type": "http", "path": _probe(route.path), "root_path": ""}
            for method in route.methods:
                probe["method"] = method
                shadow = next((e for e in earlier if e.matches(probe)[0] is Match.FULL), None)
                if shadow is not None:
                    reason = (
                        f"an earlier route matches it first ({getattr(shadow, 'path', shadow)})"
                    )
                    break
        if reason is None:
            assert isinstance(route, APIRoute)
            bucket = _template_bucket(route.path)
            assert bucket is not None
            table.setdefault(bucket, []).append(
                DirectRoute(
                    route,
                    route.dependant.request_param_name,
                    tuple(p.name for p in route.dependant.path_params),
                )
            )
        else:
            log.debug(
                "route served by FastAPI",
                extra={"route": getattr(route, "path", ""), "why": reason},
            )
        earlier.append(route)
    return table


def _handler_for(
    exc: Exception, handlers: Mapping[Any, ExceptionHandler]
) -> ExceptionHandler | None:
    """The app's handler for `exc`, found along its class's MRO as Starlette does."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            # Unexpected errors go on to Starlette's ServerErrorMiddleware, as they would from
            # FastAPI's own routing: it renders the `Exception` handler and logs the traceback.
            return None
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None


class DirectRoutes:
    """Serves the path-only routes of `fastapi_app` directly; passes everything else on."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.table = direct_table(fastapi_app.routes)
        self.handlers: dict[Any, ExceptionHandler] = dict(fastapi_app.exception_handlers)

    def find(self, scope: Scope) -> tuple[DirectRoute, dict[str, str]] | None:
        """The direct route `scope` fully matches and its path parameters, or None."""
        if scope.get("root_path"):
            return None
        path: str = scope["path"]
        candidates = self.table.get(_bucket(path))
        if candidates is None:
            return None
        method = scope["method"]
        for direct in candidates:
            route = direct.route
            if method not in route.methods:
                continue
            match = route.path_regex.fullmatch(path)
            if match is not None:
                return direct, match.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.find(scope) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        direct, params = found
        route = direct.route
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = params
        request = Request(scope, receive, send)
        kwargs: dict[str, Any] = {name: params[name] for name in direct.path_args}
        if direct.request_arg is not None:
            kwargs[direct.request_arg] = request
        try:
            response = await route.endpoint(**kwargs)
        except Exception as exc:
            handler = _handler_for(exc, self.handlers)
            if handler is None:
                raise
            response = await handler(request, exc)
        if not isinstance(response, Response):
            raise TypeError(f"{route.path}: a direct route must return a Response")
        await response(scope, receive, send)
