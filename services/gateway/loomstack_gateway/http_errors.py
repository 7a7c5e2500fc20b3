"""Every failure as OpenAI's JSON error, with the HTTP status of the kit's one error table.

gRPC errors go through `from_rpc_error`, so a status a service reported keeps its code, param and
line; request validation, unknown routes and unexpected exceptions get the same shape.

A 5xx body never carries an exception's text, a server path or an internal address: a status
that gRPC itself produced (no connection: "failed to connect to all addresses; ipv4:10.0.0.7:…",
a deadline, a lost stream) and an unexpected exception become plain words with the request id,
and the detail goes to the log under that id. Errors a service raised on purpose (a kit error
class, sent with its reason code) keep their message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from loomstack_kit.errors import (
    DETAILS_KEY,
    Internal,
    InvalidArgument,
    LoomstackError,
    NotFound,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
    mapping,
    openai_error_body,
)

from .request_ids import REQUEST_ID_HEADER, request_id_of
from .responses import OrjsonResponse

log = logging.getLogger(__name__)


def error_response(error: LoomstackError, status_code: int | None = None) -> Response:
    """OpenAI's error JSON with the table's HTTP status (or `status_code`), and `Retry-After`
    when the error advises one."""
    response = OrjsonResponse(
        openai_error_body(error), status_code=status_code or mapping(error).http_status
    )
    if error.retry_after is not None:
        response.headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return response


def _param_of(loc: Sequence[object]) -> str | None:
    # FastAPI prefixes a location with where it came from (body, query, path); OpenAI's param
    # is the field itself.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else []
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return error_response(
            InvalidArgument(f"the request body is not valid JSON: {reason}", code="invalid_json")
        )
    param = _param_of(first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    if param:
        message = f"invalid '{param}': {message}"
    return error_response(InvalidArgument(message, param=param))


# Which service a route's calls go to, by path prefix (the rest: inference).
_SERVICES = (
    ("/v1/curation", "curation"),
    ("/v1/fine_tuning", "training"),
    ("/v1/comparisons", "training"),
    ("/v1/plugin_deliveries", "curation"),
    ("/v1/plugins", "curation"),
)


def _service_for(path: str) -> str:
    for prefix, service in _SERVICES:
        if path.startswith(prefix):
            return service
    return "inference"


def _raised_on_purpose(exc: grpc.RpcError) -> bool:
    """Whether a service sent the status as a kit error (with its ErrorInfo detail)."""
    trailers: Any = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    return any(key == DETAILS_KEY for key, _ in trailers)


def upstream_error(exc: grpc.RpcError, scope: Scope) -> LoomstackError:
    """What the client is told of a failed call to a service (see the module docstring)."""
    error = from_rpc_error(exc)
    if mapping(error).http_status < 500 or _raised_on_purpose(exc):
        return error
    request_id = request_id_of(scope)
    service = _service_for(scope["path"])
    log.warning(
        "a call to the %s service failed",
        service,
        extra={
            "grpc_code": exc.code().name,  # type: ignore[attr-defined]
            "detail": exc.details(),  # type: ignore[attr-defined]
            "request_id": request_id,
        },
    )
    what = "is unavailable; retry later" if isinstance(error, Unavailable) else "failed"
    return type(error)(
        f"the {service} service {what} (request id {request_id})",
        code=error.code,
        retry_after=error.retry_after,
    )


async def _rpc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, grpc.aio.AioRpcError)
    return error_response(upstream_error(exc, request.scope))


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoomstackError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: LoomstackError
    if exc.status_code == 404:
        error = NotFound(f"no route {request.method} {request.url.path}", code="unknown_url")
    elif exc.status_code == 401:
        error = Unauthenticated(str(exc.detail))
    else:
        error = InvalidArgument(str(exc.detail), code=f"http_{exc.status_code}")
    response = error_response(error, exc.status_code)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        response.headers["allow"] = _allowed_methods(request)
    return response


def _allowed_methods(request: Request) -> str:
    # Starlette's 405 names the methods of the first route whose path matched; a path that
    # several routes share (GET and DELETE /v1/files/{id}) supports all of theirs.
    path = request.scope["path"]
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.fullmatch(path):
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = request_id_of(request.scope)
    log.exception("unhandled error", extra={"path": request.url.path, "request_id": request_id})
    response = error_response(Internal(f"internal error (request id {request_id})"))
    # Starlette's ServerErrorMiddleware sends this outside the middleware that adds the id.
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers that give every error OpenAI's shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(grpc.aio.AioRpcError, _rpc_error)
    app.add_exception_handler(LoomstackError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
