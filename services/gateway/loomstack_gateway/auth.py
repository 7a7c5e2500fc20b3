"""API keys: who is calling, as a pure-ASGI middleware in front of every route but the open ones.

Keys are held only as SHA-256 digests. Each key belongs to a project (`*` = admin, every
project); the caller's project travels to the services as gRPC metadata on every call, signed
with the installation's service secret (`loomstack_kit.identity`). An admin key may act for one
project by naming it in OpenAI's `OpenAI-Project` header (the openai client's `project=`); then
it sees and creates exactly what that project's keys do. A project key may name only its own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from loomstack_kit.errors import (
    LoomstackError,
    PermissionDenied,
    Unauthenticated,
    openai_error_body,
)
from loomstack_kit.identity import ALL_PROJECTS, DEFAULT_PROJECT, IdentitySigner, Metadata

from .settings import GatewaySettings

log = logging.getLogger(__name__)

DEV_API_KEY = "sk-loomstack-dev"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
OPEN_PREFIXES = ("/docs",)
_SCOPE_KEY = "loomstack.caller"


PROJECT_HEADER = b"openai-project"
_PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its project (None = admin) and the signer of its identity."""

    project: str | None
    signer: IdentitySigner

    @property
    def metadata(self) -> Metadata:
        """The signed gRPC metadata naming this caller's project (fresh for each call)."""
        return self.signer.metadata(self.project)

    def acting_for(self, project: str) -> Caller:
        """This caller acting for `project` (the `OpenAI-Project` header): an admin may name
        any project, a project key only its own."""
        if not _PROJECT_NAME.fullmatch(project):
            raise PermissionDenied(
                "the OpenAI-Project header must be a project name (letters, digits, _ . -)",
                param="OpenAI-Project",
                code="invalid_project",
            )
        if self.project is not None and project != self.project:
            raise PermissionDenied(
                f"this API key belongs to project {self.project!r} and cannot act for "
                f"project {project!r}",
                param="OpenAI-Project",
                code="invalid_project",
            )
        return self if project == self.project else Caller(project, self.signer)


def parse_key_pairs(spec: str) -> list[tuple[str, str]]:
    """`key:project,key2:project2` → pairs; a bare key belongs to the default project."""
    pairs = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        # rpartition: keys may contain ':', project names never do.
        key, sep, project = item.rpartition(":")
        if not sep:
            key, project = item, DEFAULT_PROJECT
        if not key or not project:
            raise ValueError(f"invalid API key entry {item!r}: use key:project")
        pairs.append((key, project))
    return pairs


class ApiKeys:
    """The digests of the accepted keys, each with its caller."""

    def __init__(self, pairs: Iterable[tuple[str, str]], signer: IdentitySigner) -> None:
        self._entries: list[tuple[bytes, Caller]] = []
        for key, project in pairs:
            scoped = None if project == ALL_PROJECTS else project
            caller = Caller(scoped, signer)
            self._entries.append((hashlib.sha256(key.encode()).digest(), caller))

    @classmethod
    def from_settings(cls, settings: GatewaySettings, signer: IdentitySigner) -> ApiKeys:
        """`api_keys` pairs plus `LOOMSTACK_API_KEY`; the dev key when neither is set."""
        pairs = parse_key_pairs(settings.api_keys)
        if settings.api_key:
            pairs.append((settings.api_key, DEFAULT_PROJECT))
        if not pairs:
            log.warning("no API keys configured: accepting the development key %s", DEV_API_KEY)
            pairs.append((DEV_API_KEY, DEFAULT_PROJECT))
        return cls(pairs, signer)

    def authenticate(self, key: bytes) -> Caller | None:
        """The caller owning `key`, or None."""
        digest = hashlib.sha256(key).digest()
        found = None
        # No early exit: every check costs the same whichever key matches.
        for stored, caller in self._entries:
            if hmac.compare_digest(stored, digest):
                found = caller
        return found


def _bearer_token(scope: Scope) -> bytes | None:
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


async def _send_error(send: Send, error: LoomstackError, status: int) -> None:
    body = orjson.dumps(openai_error_body(error))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _unauthorized_body(message: str) -> bytes:
    return orjson.dumps(openai_error_body(Unauthenticated(message, code="invalid_api_key")))


_MISSING = _unauthorized_body("missing API key: send it as `Authorization: Bearer <key>`")
_WRONG = _unauthorized_body("incorrect API key provided")


class AuthMiddleware:
    """Rejects requests without a valid key (401, OpenAI's error shape); records the caller."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        caller = self.keys.authenticate(token) if token is not None else None
        if caller is None:
            body = _MISSING if token is None else _WRONG
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        acting_for = _header(scope, PROJECT_HEADER)
        if acting_for is not None:
            try:
                caller = caller.acting_for(acting_for.decode("latin-1"))
            except PermissionDenied as error:
                await _send_error(send, error, 403)
                return
        scope[_SCOPE_KEY] = caller
        await self.app(scope, receive, send)


def caller_of(request: Request) -> Caller:
    """The caller the middleware authenticated for this request."""
    caller: Caller = request.scope[_SCOPE_KEY]
    return caller
