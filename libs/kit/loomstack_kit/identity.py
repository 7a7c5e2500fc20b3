"""Who is calling: the project a caller acts for, carried in gRPC metadata and signed.

The gateway authenticates API keys and forwards the key's project; services calling services
forward the project they act for. Neither is trusted because of where it comes from: every
identity is signed with the installation's service secret (HMAC-SHA256 over the project, the
calling service and a timestamp), and the kit's server interceptor (`server.py`) refuses a call
whose identity is unsigned, wrongly signed or stale, so a process that can reach a gRPC port but
does not hold the secret cannot act as any project, let alone as an admin. Health and reflection
stay open (probes and tooling hold no secret).

An admin key is sent as project `*` and sees every project; what it creates is recorded under
`ADMIN_PROJECT` (see `owner_project`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from .errors import Unauthenticated

log = logging.getLogger(__name__)

PROJECT_KEY = "x-loomstack-project"
SERVICE_KEY = "x-loomstack-service"
TIME_KEY = "x-loomstack-identity-time"
SIGNATURE_KEY = "x-loomstack-identity-signature"
# The gateway's request id, passed along so every service logs a request under the same id.
REQUEST_ID_KEY = "x-request-id"
ALL_PROJECTS = "*"
DEFAULT_PROJECT = "default"
# Where an admin caller's objects are recorded: never the default project, which the
# development key (and any key of project `default`) could read.
ADMIN_PROJECT = "admin"
GATEWAY = "gateway"
# How far a signature's time may be from the receiver's clock (both ways).
MAX_SKEW_SECONDS = 300.0
MIN_SECRET_BYTES = 16
SECRET_FILE_NAME = "service-secret"

Metadata = tuple[tuple[str, str | bytes], ...]


def _signature(secret: bytes, project: str, service: str, timestamp: str) -> str:
    message = f"v1\n{project}\n{service}\n{timestamp}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class IdentitySigner:
    """Builds the signed identity metadata a service (or the gateway) sends on each call."""

    def __init__(self, secret: bytes, service: str) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the service secret must have at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.service = service
        # project → (second, metadata): a signature is valid for minutes, so one per second
        # per project is plenty and keeps HMAC off the per-request path.
        self._cache: dict[str, tuple[int, Metadata]] = {}

    def metadata(self, project: str | None) -> Metadata:
        """Signed call metadata for a project (None = admin, every project)."""
        name = project if project is not None else ALL_PROJECTS
        second = int(time.time())
        cached = self._cache.get(name)
        if cached is not None and cached[0] == second:
            return cached[1]
        stamp = str(second)
        md = (
            (PROJECT_KEY, name),
            (SERVICE_KEY, self.service),
            (TIME_KEY, stamp),
            (SIGNATURE_KEY, _signature(self._secret, name, self.service, stamp)),
        )
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[name] = (second, md)
        return md


@dataclass(frozen=True)
class Identity:
    """A verified caller: the project it acts for (None = admin) and the service that signed."""

    project: str | None
    service: str


class IdentityVerifier:
    """Checks the signed identity of an incoming call (the kit's server interceptor uses it)."""

    def __init__(self, secret: bytes, max_skew_seconds: float = MAX_SKEW_SECONDS) -> None:
        self._secret = secret
        self.max_skew_seconds = max_skew_seconds

    def verify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Identity:
        """The caller's identity, or Unauthenticated saying what is wrong (never why a
        signature did not match: that would help forge one)."""
        found: dict[str, str] = {}
        for key, value in metadata or ():
            if key in (PROJECT_KEY, SERVICE_KEY, TIME_KEY, SIGNATURE_KEY) and key not in found:
                found[key] = value if isinstance(value, str) else value.decode(errors="replace")
        missing = [k for k in (PROJECT_KEY, SERVICE_KEY, TIME_KEY, SIGNATURE_KEY) if k not in found]
        if missing:
            raise Unauthenticated(
                "the call carries no signed caller identity (missing " + ", ".join(missing) + ")",
                code="unsigned_identity",
            )
        stamp = found[TIME_KEY]
        try:
            skew = abs(time.time() - float(stamp))
        except ValueError:
            skew = float("inf")
        if not skew <= self.max_skew_seconds:
            raise Unauthenticated(
                "the caller identity's signature is stale or its time is malformed",
                code="stale_identity",
            )
        expected = _signature(self._secret, found[PROJECT_KEY], found[SERVICE_KEY], stamp)
        if not hmac.compare_digest(expected, found[SIGNATURE_KEY]):
            raise Unauthenticated(
                "the caller identity's signature is not valid", code="invalid_identity"
            )
        project = found[PROJECT_KEY]
        return Identity(None if project == ALL_PROJECTS else project, found[SERVICE_KEY])


def load_service_secret(
    secret: str = "", secret_file: Path | None = None, home: Path | None = None
) -> bytes:
    """The installation's service secret: the value, else the file, else `<home>/service-secret`
    (created with a random secret when missing, so the embedded default's processes, which
    share their home, agree without configuration)."""
    if secret:
        value = secret.encode()
    elif secret_file is not None:
        try:
            value = secret_file.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the service secret file {secret_file}: {exc}") from exc
    else:
        if home is None:
            raise ValueError("no service secret configured")
        path = home / SECRET_FILE_NAME
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{SECRET_FILE_NAME}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
            try:
                # link, not rename: a second process racing us keeps the first file.
                os.link(tmp, path)
                log.warning("generated a service secret", extra={"path": str(path)})
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        value = path.read_bytes().strip()
    if len(value) < MIN_SECRET_BYTES:
        raise ValueError(f"the service secret must have at least {MIN_SECRET_BYTES} bytes")
    return value


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, value in context.invocation_metadata() or ():
        if k == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def project_of(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's project (verified by the server interceptor); None for an admin caller."""
    value = _metadata_value(context, PROJECT_KEY)
    if value is None:
        # Unreachable behind the interceptor; fail closed rather than default to a project.
        raise Unauthenticated("the call names no project", code="unsigned_identity")
    return None if value == ALL_PROJECTS else value


def calling_service(context: grpc.aio.ServicerContext) -> str | None:
    """The calling service's name; None for calls that came through the gateway (on behalf of
    an API key). Services may store system files, e.g. training's `fine-tune-results`."""
    value = _metadata_value(context, SERVICE_KEY)
    return None if value in (None, GATEWAY) else value


def request_id_of(context: grpc.aio.ServicerContext) -> str | None:
    """The request id the gateway gave the call, if any."""
    return _metadata_value(context, REQUEST_ID_KEY)


def owner_project(project: str | None) -> str:
    """The project new objects are recorded under (an admin's go to `ADMIN_PROJECT`)."""
    return project if project is not None else ADMIN_PROJECT


def forwarded(signer: IdentitySigner, context: grpc.aio.ServicerContext) -> Metadata:
    """Metadata to call another service on behalf of this call's caller (same project, same
    request id), signed by this service."""
    md = signer.metadata(project_of(context))
    request_id = request_id_of(context)
    return (*md, (REQUEST_ID_KEY, request_id)) if request_id else md
