"""Per-API-key limits: requests per minute and requests in flight, as a pure-ASGI layer after auth.

Over either limit a request gets `429` at once, in OpenAI's error shape (type `requests`, code
`rate_limit_exceeded`, the message naming the limit and its value) with `Retry-After`; nothing
waits in a queue. Only requests that carry a valid key are counted (the auth layer names the
key in the scope), so the open paths are never limited; admin keys are limited like any key.

- **Rate**: a moving window of one minute from the maintained `limits` package (what slowapi and
  Flask-Limiter use): a request is admitted when fewer than `per_minute` requests of the same key
  were admitted in the last 60 s, and `Retry-After` is the time until the oldest of them leaves
  the window. `memory://` keeps the windows in this process (per replica) with the library's
  in-memory storage, called inline: it is plain CPU work, and its asyncio twin spends a task and
  a thread hop per request on expiring entries. `redis://host:port/db` keeps them in Redis with
  the library's asyncio storage, shared by every gateway replica (one round trip per request).
- **Concurrency**: at most `concurrency` requests of one key in flight on this replica, counted
  from auth to the end of the response (a streamed answer counts until its last byte).

If the shared store fails, requests are admitted (fail open) and a warning is logged, at most
every `STORE_RETRY_SECONDS`, while the store is left alone for that long: the store protects the
services from one caller's flood, and refusing every caller while Redis is down would turn a
Redis outage into an outage of the whole API; the per-replica concurrency limit still holds.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol
from urllib.parse import urlsplit

import orjson
from limits import RateLimitItemPerMinute
from limits import storage as sync_storage
from limits import strategies as sync_strategies
from limits.aio import storage as aio_storage
from limits.aio import strategies as aio_strategies
from limits.errors import StorageError
from starlette.types import ASGIApp, Receive, Scope, Send

from loomstack_kit.errors import RateLimited, openai_error_body

log = logging.getLogger(__name__)

KEY_ID_SCOPE = "loomstack.key_id"
STORE_RETRY_SECONDS = 5.0
STORE_TIMEOUT_SECONDS = 0.5
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")


class RequestWindow(Protocol):
    """Admits requests per key against a requests-per-minute limit."""

    per_minute: int

    async def admit(self, key: str) -> float | None:
        """None when the request may go; else the seconds until the window frees a slot."""
        ...


class LocalWindow:
    """The moving windows of this process (`memory://`)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = sync_strategies.MovingWindowRateLimiter(sync_storage.MemoryStorage())

    async def admit(self, key: str) -> float | None:
        if self._limiter.hit(self._item, key):
            return None
        return self._limiter.get_window_stats(self._item, key).reset_time - time.time()


class SharedWindow:
    """Moving windows in Redis, shared by every replica; fails open while Redis fails."""

    def __init__(self, per_minute: int, uri: str, key_prefix: str) -> None:
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(per_minute)
        self._store = aio_storage.RedisStorage(
            f"async+{uri}",
            implementation="redispy",
            key_prefix=key_prefix,
            wrap_exceptions=True,
            socket_timeout=STORE_TIMEOUT_SECONDS,
            socket_connect_timeout=STORE_TIMEOUT_SECONDS,
        )
        self._limiter = aio_strategies.MovingWindowRateLimiter(self._store)
        self._skip_until = 0.0

    async def admit(self, key: str) -> float | None:
        if self._skip_until and time.monotonic() < self._skip_until:
            return None
        try:
            if await self._limiter.hit(self._item, key):
                self._skip_until = 0.0
                return None
            stats = await self._limiter.get_window_stats(self._item, key)
        except StorageError as exc:
            self._skip_until = time.monotonic() + STORE_RETRY_SECONDS
            # The error's text, not the URI: the URI may hold the password.
            log.warning(
                "the rate limit store failed: admitting requests without a rate limit for "
                f"{STORE_RETRY_SECONDS:g} s",
                extra={"error": f"{type(exc.storage_error).__name__}: {exc.storage_error}"},
            )
            return None
        return stats.reset_time - time.time()


def request_window(per_minute: int, storage_uri: str, key_prefix: str) -> RequestWindow | None:
    """The window for the settings; None when the rate limit is off. A URI of another kind is
    a ValueError naming its scheme (never the URI, which may hold a password)."""
    if per_minute <= 0:
        return None
    scheme = urlsplit(storage_uri).scheme
    if scheme == "memory":
        return LocalWindow(per_minute)
    if scheme in REDIS_SCHEMES:
        return SharedWindow(per_minute, storage_uri, key_prefix)
    raise ValueError(
        f"LOOMSTACK_GATEWAY_RATE_LIMIT_STORAGE: unsupported scheme {scheme!r}; use memory:// "
        "or redis://host:port/db (rediss://, redis+unix:// too)"
    )


def _refusal(message: str, retry_after: float) -> tuple[bytes, bytes]:
    """The 429's body and its Retry-After value (whole seconds, at least 1)."""
    body = orjson.dumps(openai_error_body(RateLimited(message, retry_after=retry_after)))
    return body, str(max(1, math.ceil(retry_after))).encode()


class KeyLimits:
    """Refuses a key's request with 429 when the key is over its rate or concurrency limit."""

    def __init__(self, app: ASGIApp, *, window: RequestWindow | None, concurrency: int) -> None:
        self.app = app
        self.window = window
        self.concurrency = max(0, concurrency)
        self._in_flight: dict[str, int] = {}
        self._too_many = _refusal(
            f"too many concurrent requests: at most {self.concurrency} requests of one API key "
            "may be in flight (on each gateway replica); retry when one has finished",
            1.0,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key: str | None = scope.get(KEY_ID_SCOPE)
        if key is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        in_flight = self._in_flight
        if self.concurrency:
            count = in_flight.get(key, 0)
            if count >= self.concurrency:
                await _send_429(send, self._too_many)
                return
            # Counted before the rate check awaits, so concurrent requests see each other.
            in_flight[key] = count + 1
        try:
            if self.window is not None:
                retry_after = await self.window.admit(key)
                if retry_after is not None:
                    per_minute = self.window.per_minute
                    await _send_429(
                        send,
                        _refusal(
                            f"rate limit exceeded: at most {per_minute} requests per minute "
                            f"per API key; retry in {max(1, math.ceil(retry_after))} s",
                            retry_after,
                        ),
                    )
                    return
            await self.app(scope, receive, send)
        finally:
            if self.concurrency:
                count = in_flight[key] - 1
                if count:
                    in_flight[key] = count
                else:
                    del in_flight[key]


async def _send_429(send: Send, refusal: tuple[bytes, bytes]) -> None:
    body, retry_after = refusal
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", retry_after),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
