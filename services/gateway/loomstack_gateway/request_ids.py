"""Request ids: one per HTTP request, on the response, in the log lines and sent upstream.

`RequestIds` is the outermost pure-ASGI layer: it gives each request a fresh `req_...` id (the
shape of OpenAI's), puts it in the scope and in a context variable for the request's task, and
adds `x-request-id` to the response, so that a refusal by any later layer (401, 413, 429)
carries one too. The id is never taken from the client: a caller-chosen id could collide with
another request's or forge log lines. Routes send it to the services as the gRPC metadata
`x-request-id` (through `caller_of(request).metadata`), so every process logs the request under
the same id; `RequestIdLogFilter` adds it to each log record made while the request runs.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loomstack_kit.ids import new_request_id

REQUEST_ID_HEADER = "x-request-id"
_HEADER = REQUEST_ID_HEADER.encode()
_SCOPE_KEY = "loomstack.request_id"
_current: ContextVar[str | None] = ContextVar("loomstack_request_id", default=None)


def request_id_of(scope: Scope) -> str:
    """The id of the request `scope` belongs to (a fresh one outside `RequestIds`)."""
    request_id: str | None = scope.get(_SCOPE_KEY)
    if request_id is None:
        request_id = scope[_SCOPE_KEY] = new_request_id()
    return request_id


def current_request_id() -> str | None:
    """The id of the request the running task serves, if any."""
    return _current.get()


class RequestIds:
    """Gives every HTTP request an id and every response its `x-request-id` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope[_SCOPE_KEY] = new_request_id()
        header = (_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to records made while a request runs (the JSON log lines show it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = _current.get()
            if request_id is not None:
                record.request_id = request_id
        return True


_LOG_FILTER = RequestIdLogFilter()


def install_log_filter() -> None:
    """Puts the filter on the root logger's handlers (every logger propagates to them)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_LOG_FILTER)
