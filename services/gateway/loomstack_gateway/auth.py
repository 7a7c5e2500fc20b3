"""API keys: who is calling, as a pure-ASGI middleware in front of every route but the open ones.

The middleware fails closed: every scope but `lifespan` (HTTP and websocket alike) needs a valid
key, on every path but exactly those of `OPEN_PATHS` (no prefixes: `/docs/x` and `/healthz/`
need a key too). A websocket without one is refused before the app sees it.

Keys come from `LOOMSTACK_GATEWAY_API_KEYS` and/or the file `LOOMSTACK_GATEWAY_API_KEYS_FILE`
(`key:project,...`), plus `LOOMSTACK_API_KEY`. The development key `sk-loomstack-dev` is accepted
only when no key is configured at all: with a key list, only a list that names it makes it
valid (`make up` passes `LOOMSTACK_API_KEY=sk-loomstack-dev` unless told otherwise, so it must
not sneak in that way). A list that cannot be parsed stops the gateway from starting, with a
message naming the entry by its position, never by the key's text.

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
from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from loomstack_kit.errors import (
    LoomstackError,
    PermissionDenied,
    Unauthenticated,
    openai_error_body,
)
from loomstack_kit.identity import (
    ALL_PROJECTS,
    DEFAULT_PROJECT,
    REQUEST_ID_KEY,
    IdentitySigner,
    Metadata,
)

from .key_limits import KEY_ID_SCOPE
from .request_ids import request_id_of
from .settings import GatewaySettings

log = logging.getLogger(__name__)

DEV_API_KEY = "sk-loomstack-dev"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"})
_SCOPE_KEY = "loomstack.caller"
# A domain for the key ids the limits are counted under (they may live in a shared Redis): not
# the digest the keys are checked against.
_KEY_ID_DOMAIN = b"loomstack gateway key id\0"


PROJECT_HEADER = b"openai-project"
_PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its project (None = admin) and the signer of its identity."""

    project: str | None
    signer: IdentitySigner
    # The request this caller is making (set by the middleware), sent along as `x-request-id`.
    request_id: str | None = None

    @property
    def metadata(self) -> Metadata:
        """The signed gRPC metadata naming this caller's project (fresh for each call), and the
        request's id."""
        md = self.signer.metadata(self.project)
        return md if self.request_id is None else (*md, (REQUEST_ID_KEY, self.request_id))

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


class KeyListError(ValueError):
    """A key list the gateway cannot use; the message names the entry, never the key."""


@dataclass(frozen=True)
class KeyEntry:
    """One entry of a key list: the key, its project and where it was written."""

    key: str
    project: str
    where: str


def parse_key_list(spec: str, source: str = "LOOMSTACK_GATEWAY_API_KEYS") -> list[KeyEntry]:
    """`key:project,key2:project2` (commas or newlines between entries) → entries; a bare key
    belongs to the default project. `source` names the list in errors and in `where`."""
    entries = []
    items = [item.strip() for item in spec.replace("\n", ",").split(",")]
    for number, item in enumerate((item for item in items if item), start=1):
        # rpartition: keys may contain ':', project names never do.
        key, sep, project = item.rpartition(":")
        if not sep:
            key, project = item, DEFAULT_PROJECT
        where = f"{source}: entry {number}"
        if not key or not project:
            raise KeyListError(f"{where} is not `key:project` (one of the two is empty)")
        if any(c.isspace() for c in key):
            raise KeyListError(f"{where}: the key contains whitespace")
        if project != ALL_PROJECTS and not _PROJECT_NAME.fullmatch(project):
            raise KeyListError(
                f"{where}: the project is not a project name (letters, digits, _ . -) or `*`"
            )
        entries.append(KeyEntry(key, project, where))
    if not entries:
        raise KeyListError(f"{source} is set but names no key")
    return entries


def _key_file_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise KeyListError(
            f"LOOMSTACK_GATEWAY_API_KEYS_FILE: cannot read {path}: {reason}"
        ) from None


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
        """The key list (`api_keys`, `api_keys_file`) plus `LOOMSTACK_API_KEY`; the development
        key only when no key is configured at all. KeyListError when the list is unusable."""
        entries: list[KeyEntry] = []
        if settings.api_keys.strip():
            entries += parse_key_list(settings.api_keys)
        if settings.api_keys_file is not None:
            path = settings.api_keys_file
            entries += parse_key_list(
                _key_file_text(path), f"LOOMSTACK_GATEWAY_API_KEYS_FILE ({path})"
            )
        seen: dict[str, str] = {}
        for entry in entries:
            if entry.key in seen:
                raise KeyListError(f"{entry.where} names the same key as {seen[entry.key]}")
            seen[entry.key] = entry.where
        pairs = [(entry.key, entry.project) for entry in entries]
        listed = set(seen)
        extra = settings.api_key
        if extra and extra not in listed:
            if listed and extra == DEV_API_KEY:
                log.warning(
                    "LOOMSTACK_API_KEY is the development key, which the key list does not "
                    "name: it is not accepted"
                )
            else:
                pairs.append((extra, DEFAULT_PROJECT))
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


def key_id(token: bytes) -> str:
    """The name a key's limits are counted under (not the key, nor the digest it is held as)."""
    return hashlib.sha256(_KEY_ID_DOMAIN + token).hexdigest()[:32]


def _bearer_token(scope: Scope) -> bytes | None:
    name: bytes
    value: bytes
    for name, value in scope.get("headers", ()):
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
        kind = scope["type"]
        if kind == "lifespan" or (kind == "http" and scope["path"] in OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        caller = self.keys.authenticate(token) if token is not None else None
        if caller is None or token is None:
            await _refuse(scope, send, _MISSING if token is None else _WRONG)
            return
        if kind != "http":
            # No route takes a websocket; the app closes it. Only a keyed caller gets there.
            await self.app(scope, receive, send)
            return
        acting_for = _header(scope, PROJECT_HEADER)
        if acting_for is not None:
            try:
                caller = caller.acting_for(acting_for.decode("latin-1"))
            except PermissionDenied as error:
                await _send_error(send, error, 403)
                return
        scope[_SCOPE_KEY] = Caller(caller.project, caller.signer, request_id_of(scope))
        scope[KEY_ID_SCOPE] = key_id(token)
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, body: bytes) -> None:
    """401 with OpenAI's error; a websocket gets it as its handshake's answer where the server
    can send one, else a close before accepting (which the server answers with 403)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # policy violation


def caller_of(request: Request) -> Caller:
    """The caller the middleware authenticated for this request."""
    caller: Caller = request.scope[_SCOPE_KEY]
    return caller
