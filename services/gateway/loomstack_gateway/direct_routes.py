"""Routes marked `@direct` (the few that clients poll), dispatched without FastAPI's
per-request machinery. A marked route takes only the request and string path parameters.

Such a route gains nothing from FastAPI's request handling: there is nothing to validate or
inject. Yet that handling (Starlette's linear scan over ~50 routes, dependency solving, two
`AsyncExitStack`s and the exception wrappers) cost about 0.2 ms of CPU per request on the bench
machine, as much as the rest of the gateway's work on `GET /v1/batches/{id}`. This ASGI layer
looks up the routes that can match the path by its first two segments (one dict lookup), takes
the first that fully matches, in the app's order, and when that is such a route calls its
endpoint with the same arguments FastAPI would pass and renders its errors with the app's
exception handlers. Every other request goes on to FastAPI.

The routes stay ordinary FastAPI routes: one endpoint function, one OpenAPI entry. The layer sits
inside the auth and metrics middleware, so both apply to every request either way.

The layer is opt-in and fenced. Only an endpoint marked with `@direct` is served here, and each
marked route's signature is checked when the app is built (`check_direct_routes`): one this layer
could not call as FastAPI would (a query, header, cookie, body or security parameter, a
dependency, FastAPI's `Response`, `BackgroundTasks`, `HTTPConnection` or `WebSocket`, a
parameter the layer does not know) stops the gateway from starting, naming the route. Calling
an endpoint as FastAPI would relies on FastAPI's `Dependant` and Starlette's route matching, so
both are pinned to the minor versions this was verified against (`VERIFIED_WITH`; a test fails
when an installed version differs).
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
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

# The FastAPI and Starlette minor versions this layer was verified against (see the module's
# docstring); the gateway's pyproject.toml pins the same, and a test compares them.
VERIFIED_WITH = {"fastapi": "0.136", "starlette": "1.10"}

_MARK = "__loomstack_direct__"

Endpoint = Callable[..., Awaitable[Response]]


def direct(endpoint: Endpoint) -> Endpoint:
    """Marks a route's endpoint to be served by this layer (put it below the route decorator)."""
    setattr(endpoint, _MARK, True)
    return endpoint


def is_marked(route: BaseRoute) -> bool:
    return bool(getattr(getattr(route, "endpoint", None), _MARK, False))


class DirectRouteError(RuntimeError):
    """A route marked `@direct` that this layer cannot serve as FastAPI would."""


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


def _template_bucket(route: BaseRoute) -> str | None:
    """The bucket of every path `route` matches, or None when it may match paths in any bucket
    (a parameter within the first two segments, a mount, a route of another kind)."""
    if not isinstance(route, Route):
        return None
    bucket = _bucket(route.path)
    return None if "{" in bucket else bucket


def why_not_direct(route: BaseRoute) -> str | None:
    """None when the layer can serve `route` exactly as FastAPI would; otherwise why not."""
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
    for what, name in (
        ("FastAPI's Response", dependant.response_param_name),
        ("BackgroundTasks", dependant.background_tasks_param_name),
        ("an HTTPConnection", dependant.http_connection_param_name),
        ("a WebSocket", dependant.websocket_param_name),
        ("SecurityScopes", dependant.security_scopes_param_name),
    ):
        if name is not None:
            return f"takes {what} ({name!r})"
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
    # Whatever else FastAPI learns to inject: the layer passes only these.
    known = {p.name for p in dependant.path_params} | {dependant.request_param_name}
    unknown = [n for n in inspect.signature(route.endpoint).parameters if n not in known]
    if unknown:
        return f"takes parameters the layer does not pass: {', '.join(unknown)}"
    if _template_bucket(route) is None:
        return "a parameter within the first two path segments"
    return None


def check_direct_routes(routes: list[BaseRoute]) -> list[APIRoute]:
    """The routes marked `@direct`; raises DirectRouteError naming each marked route the layer
    cannot serve (the gateway then refuses to start)."""
    marked: list[APIRoute] = []
    refused: list[str] = []
    for route in routes:
        if not is_marked(route):
            continue
        reason = why_not_direct(route)
        if reason is not None:
            endpoint = getattr(route, "endpoint", None)
            name = getattr(endpoint, "__qualname__", repr(endpoint))
            refused.append(f"{getattr(route, 'path', route)!s} ({name}): {reason}")
        else:
            assert isinstance(route, APIRoute)
            marked.append(route)
    if refused:
        raise DirectRouteError(
            "routes marked @direct that the direct layer cannot serve: " + "; ".join(refused)
        )
    return marked


# One entry of a bucket: a route in the app's order, and how the layer serves it (None: FastAPI).
Entry = tuple[BaseRoute, DirectRoute | None]


def direct_table(routes: list[BaseRoute]) -> dict[str, list[Entry]]:
    """Bucket → every route that can match a path in it, in the app's order, for each bucket
    that holds a route the layer serves (a marked one; DirectRouteError for one it cannot).

    Keeping FastAPI's routes in the list keeps FastAPI's precedence: the first route that fully
    matches a request decides, and when it is not one the layer serves, FastAPI answers.
    """
    marked = {id(route) for route in check_direct_routes(routes)}
    entries: list[tuple[str | None, Entry]] = []
    for route in routes:
        direct_route = None
        if id(route) in marked:
            assert isinstance(route, APIRoute)
            direct_route = DirectRoute(
                route,
                route.dependant.request_param_name,
                tuple(p.name for p in route.dependant.path_params),
            )
        entries.append((_template_bucket(route), (route, direct_route)))
    served = {bucket for bucket, (_, served_by) in entries if served_by is not None}
    return {
        bucket: [entry for where, entry in entries if where in (bucket, None)]
        for bucket in served
        if bucket is not None
    }


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
    """Serves the `@direct` routes of `fastapi_app`; passes everything else on."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.table = direct_table(fastapi_app.routes)
        self.handlers: dict[Any, ExceptionHandler] = dict(fastapi_app.exception_handlers)

    def find(self, scope: Scope) -> tuple[DirectRoute, dict[str, str]] | None:
        """The direct route that is the first to fully match `scope`, and its path parameters;
        None when there is none or an earlier FastAPI route matches first."""
        if scope.get("root_path"):
            return None
        path: str = scope["path"]
        entries = self.table.get(_bucket(path))
        if entries is None:
            return None
        method = scope["method"]
        for route, served_by in entries:
            if not isinstance(route, Route):
                if route.matches(scope)[0] is Match.FULL:
                    return None
                continue
            # Route.matches without building a child scope: FULL is the pattern and the method.
            match = route.path_regex.fullmatch(path)
            if match is None or (route.methods is not None and method not in route.methods):
                continue
            return None if served_by is None else (served_by, match.groupdict())
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
