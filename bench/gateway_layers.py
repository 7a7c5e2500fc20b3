"""What each of the gateway's pure-ASGI layers costs per request, measured in process.

Every layer wraps a trivial endpoint that answers 200 at once; the same request scope goes
through the bare endpoint and through each stack, many times, alternating, and the difference
of the medians is the layer's cost in microseconds of CPU per request (no sockets, no server:
what the event loop pays). Run: `.venv/bin/python bench/gateway_layers.py [--requests N]`.

The rate limit is measured as the gateway runs it by default (`memory://`, 600 per minute),
with requests spread over 8 keys so that they are admitted (an admitted request does the
most work: the window records it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from loomstack_gateway.auth import ApiKeys, AuthMiddleware
from loomstack_gateway.body_limits import BodyLimits
from loomstack_gateway.key_limits import KEY_ID_SCOPE, KeyLimits, LocalWindow
from loomstack_gateway.request_ids import RequestIds
from loomstack_kit.identity import GATEWAY, IdentitySigner

KEYS = [f"sk-bench-{i}" for i in range(8)]
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
App = Callable[..., Any]


async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["method"] == "POST":
        await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def scope_for(method: str, key_index: int) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {KEYS[key_index]}".encode())]
    if method == "POST":
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ]
    return {
        "type": "http",
        "method": method,
        "path": "/v1/batches/batch_abc" if method == "GET" else "/v1/chat/completions",
        "root_path": "",
        "headers": headers,
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


async def time_app(app: App, method: str, n: int) -> float:
    """Microseconds of CPU per request through `app`."""
    scopes = [scope_for(method, i % len(KEYS)) for i in range(n)]
    start = time.process_time()
    for scope in scopes:
        # Mimic the pre-auth scope: the key id is what auth adds; the app must not see it twice.
        scope.pop(KEY_ID_SCOPE, None)
        await app(scope, _receive, _send)
    return (time.process_time() - start) / n * 1e6


def stacks() -> dict[str, App]:
    signer = IdentitySigner(b"bench-secret-bench-secret", GATEWAY)
    keys = ApiKeys([(k, "bench") for k in KEYS], signer)

    def limits(app: App) -> App:
        return KeyLimits(app, window=LocalWindow(600), concurrency=32)

    def body(app: App) -> App:
        return BodyLimits(app, max_json_bytes=16 * 2**20, drain_bytes=2**20)

    return {
        "bare endpoint": endpoint,
        "request ids": RequestIds(endpoint),
        "body limits": body(endpoint),
        "auth": AuthMiddleware(endpoint, keys=keys),
        "auth + key limits": AuthMiddleware(limits(endpoint), keys=keys),
        "all four": RequestIds(body(AuthMiddleware(limits(endpoint), keys=keys))),
    }


async def main(requests: int, rounds: int) -> None:
    for method in ("GET", "POST"):
        samples: dict[str, list[float]] = {name: [] for name in stacks()}
        for _ in range(rounds):
            # Fresh windows each round, so every request is admitted (at most 600 per key).
            for name, app in stacks().items():
                samples[name].append(await time_app(app, method, requests))
        bare = statistics.median(samples["bare endpoint"])
        print(f"{method} (median of {rounds} rounds x {requests} requests)")
        for name, values in samples.items():
            median = statistics.median(values)
            added = "" if name == "bare endpoint" else f"  (+{median - bare:.1f} us)"
            print(f"  {name:20s} {median:6.1f} us/request{added}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4_000, help="at most 4,800 (600 per key)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
