"""Request bodies: JSON bodies over a set size are refused before they are read whole, and what a
refused request still sends is read only so far.

`BodyLimits` is a pure-ASGI layer in front of auth:

- A body that is not a file upload (chat, batches, comparisons, curation, fine-tuning, admin:
  every route but `POST /v1/files`, which streams its file upstream) may have at most
  `max_json_bytes`. A larger `Content-Length` gets `413` before a byte of the body is read; a
  chunked body is counted as it arrives and refused as soon as the count passes the limit (the
  route sees the client go away, and its answer is replaced by the `413`).
- A response that starts before the request's body has all arrived (any refusal: 401, 413, 429,
  a rejected upload) first reads and discards at most `drain_bytes` of what is left, for at most
  `DRAIN_SECONDS`, so that a client still sending a small remainder reads the answer rather than
  a reset connection. When more is left, the response says `connection: close` and the server
  closes the connection after it: otherwise uvicorn would go on reading, and discarding, the
  rest of the body however large it is. A client that asked for `100-continue` and sent nothing
  yet is not invited to send: it gets the answer and the close.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loomstack_kit.errors import TooLarge, openai_error_body

log = logging.getLogger(__name__)

# Routes whose body is not JSON but a stream with limits of its own (multipart_stream.py).
STREAMED_ROUTES = frozenset({("POST", "/v1/files")})
DRAIN_SECONDS = 1.0
_CLOSE = (b"connection", b"close")


@dataclass
class _Body:
    """What has arrived of one request's body."""

    declared: int | None
    expects_continue: bool
    received: int = 0
    complete: bool = False
    refused: bool = False
    started: bool = False


def _framing(scope: Scope) -> _Body | None:
    """The request's body framing; None when it has no body."""
    declared: int | None = None
    chunked = expects_continue = False
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expects_continue = value.lower() == b"100-continue"
    if not chunked and not declared:
        return None
    return _Body(declared if not chunked else None, expects_continue)


def _too_large(limit: int) -> tuple[bytes, int]:
    error = TooLarge(
        f"the request body is larger than {limit} bytes, the most this API accepts for a JSON body",
        code="request_too_large",
    )
    return orjson.dumps(openai_error_body(error)), 413


class BodyLimits:
    """Refuses over-limit JSON bodies with 413; bounds what is read after any early answer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_json_bytes: int,
        drain_bytes: int,
        streamed_routes: frozenset[tuple[str, str]] = STREAMED_ROUTES,
    ) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.drain_bytes = drain_bytes
        self.streamed_routes = streamed_routes
        self._refusal = _too_large(max_json_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _framing(scope)
        if body is None:
            await self.app(scope, receive, send)
            return
        limited = (scope["method"], scope["path"]) not in self.streamed_routes
        limit = self.max_json_bytes
        if limited and body.declared is not None and body.declared > limit:
            body.refused = True
            await self._send_refusal(body, receive, send)
            return

        async def counted_receive() -> Message:
            if body.refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                body.received += len(message.get("body", b""))
                body.complete = not message.get("more_body", False)
                if limited and body.received > limit:
                    body.refused = True
                    log.info("refused a request body over the limit", extra={"limit": limit})
                    return {"type": "http.disconnect"}
            else:
                body.complete = True
            return message

        async def guarded_send(message: Message) -> None:
            if body.refused and not body.started:
                # The route's answer to the disconnect it was shown; the 413 goes instead.
                return
            if message["type"] == "http.response.start":
                body.started = True
                if not body.complete and not await self._drain(body, receive):
                    message["headers"] = [*message.get("headers", ()), _CLOSE]
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not body.refused or body.started:
                raise
            # What the route raised on seeing the client go away (ClientDisconnect) is moot.
            log.debug("route failed after its body was refused", exc_info=True)
        if body.refused and not body.started:
            await self._send_refusal(body, receive, send)

    async def _send_refusal(self, body: _Body, receive: Receive, send: Send) -> None:
        content, status = self._refusal
        body.started = True
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        if not await self._drain(body, receive):
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _drain(self, body: _Body, receive: Receive) -> bool:
        """Reads and discards the rest of the body if it is small; whether it all arrived."""
        if body.complete:
            return True
        if body.expects_continue and body.received == 0:
            return False
        if body.declared is not None and body.declared - body.received > self.drain_bytes:
            return False
        budget = self.drain_bytes
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while budget >= 0:
                    message = await receive()
                    if message["type"] != "http.request":
                        return False
                    budget -= len(message.get("body", b""))
                    if not message.get("more_body", False):
                        body.complete = budget >= 0
                        return body.complete
        except TimeoutError:
            pass
        return False
