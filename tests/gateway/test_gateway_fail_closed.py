"""Auth fails closed: every scope but lifespan and every path but the exact open ones need a key.

The open paths are exactly /healthz, /readyz, /metrics, /openapi.json, /docs and /redoc (the
gateway turns ReDoc off, so /redoc answers 404 — without asking for a key). Nothing near them is
open: no prefix, no trailing slash, no other case. A websocket without a key is refused at the
handshake, before the app sees it.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway_stack import KEY_A, Gateway
from loomstack_gateway.auth import ApiKeys, AuthMiddleware
from loomstack_kit.identity import GATEWAY, IdentitySigner

OPEN = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]
NEAR_OPEN = [
    "/healthz/",
    "/healthz/x",
    "/Healthz",
    "//healthz",
    "/readyz/",
    "/metrics/",
    "/metrics.txt",
    "/openapi.json/x",
    "/docs/",
    "/docs/oauth2-redirect",
    "/docs/anything",
    "/docsx",
    "/redoc/",
    "/",
]


@pytest.mark.parametrize("path", OPEN)
def test_the_open_paths_need_no_key(gateway: Gateway, path: str) -> None:
    assert gateway.http(None).get(path).status_code == 200


def test_redoc_is_open_but_off(gateway: Gateway) -> None:
    resp = gateway.http(None).get("/redoc")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "unknown_url"


@pytest.mark.parametrize("path", NEAR_OPEN)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_paths_near_the_open_ones_need_a_key(gateway: Gateway, method: str, path: str) -> None:
    resp = gateway.http(None).request(method, path)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "invalid_api_key"
    # With a key the same paths get the app's own answer (an unknown route), not a 401.
    assert gateway.http(KEY_A).request(method, path).status_code != 401


def _ws_url(gateway: Gateway, path: str) -> str:
    return gateway.url.replace("http://", "ws://") + path


@pytest.mark.parametrize("path", ["/v1/models", "/healthz", "/ws"])
def test_a_websocket_without_a_key_is_refused_at_the_handshake(gateway: Gateway, path: str) -> None:
    with pytest.raises(InvalidStatus) as exc:
        connect(_ws_url(gateway, path), open_timeout=10).close()
    response = exc.value.response
    assert response.status_code == 401
    assert b"invalid_api_key" in response.body
    with pytest.raises(InvalidStatus) as exc:
        connect(
            _ws_url(gateway, path),
            additional_headers={"Authorization": "Bearer sk-wrong"},
            open_timeout=10,
        ).close()
    assert exc.value.response.status_code == 401


def test_a_websocket_with_a_key_reaches_the_app(gateway: Gateway) -> None:
    # No route takes a websocket: the app refuses it (403), where auth let it through.
    with pytest.raises(InvalidStatus) as exc:
        connect(
            _ws_url(gateway, "/v1/models"),
            additional_headers={"Authorization": f"Bearer {KEY_A}"},
            open_timeout=10,
        ).close()
    assert exc.value.response.status_code == 403


class _Recorder:
    """The app behind the middleware: records each scope it is handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(scope["type"])


async def _through_auth(scope: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    recorder = _Recorder()
    keys = ApiKeys([("sk-unit", "team-u")], IdentitySigner(b"unit-test-secret-0123", GATEWAY))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await AuthMiddleware(recorder, keys=keys)(scope, receive, send)
    return recorder.seen, sent


async def test_only_lifespan_passes_without_a_key() -> None:
    seen, sent = await _through_auth({"type": "lifespan"})
    assert (seen, sent) == (["lifespan"], [])

    # A server without the websocket response extension: a close before accept (its 403).
    ws = {"type": "websocket", "path": "/v1/models", "headers": [], "extensions": {}}
    seen, sent = await _through_auth(ws)
    assert seen == []
    assert sent == [{"type": "websocket.close", "code": 1008}]

    with_key = dict(ws, headers=[(b"authorization", b"Bearer sk-unit")])
    seen, _ = await _through_auth(with_key)
    assert seen == ["websocket"]

    # A scope type ASGI may grow later is refused too, not passed on.
    seen, sent = await _through_auth({"type": "webtransport", "path": "/x", "headers": []})
    assert (seen, sent) == ([], [])
