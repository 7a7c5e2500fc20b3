"""Domain errors and the ONE table that maps them to gRPC status codes and HTTP responses.

Services raise these from plain domain code. The gRPC layer turns them into a status with a
`google.rpc.ErrorInfo` detail (reason = OpenAI error code, metadata = param and line), and the
gateway turns that status back into the same error, then into OpenAI's JSON error shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"
_DOMAIN = "loomstack.dev"


class LoomstackError(Exception):
    """Base of every error a service reports to its callers."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        line: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or _TABLE[type(self)].default_code
        self.param = param
        self.line = line
        # Seconds a client should wait before retrying (HTTP `Retry-After`); None = no advice.
        self.retry_after = retry_after


class InvalidArgument(LoomstackError):
    """The request or an uploaded file is malformed."""


class NotFound(LoomstackError):
    """The named object does not exist (or belongs to another project)."""


class AlreadyExists(LoomstackError):
    """The object exists already."""


class FailedPrecondition(LoomstackError):
    """The object is in a state that does not allow the operation."""


class Unauthenticated(LoomstackError):
    """No or a wrong API key."""


class PermissionDenied(LoomstackError):
    """The key may not do this."""


class TooLarge(LoomstackError):
    """A file or request is over a configured limit."""


class RateLimited(LoomstackError):
    """The caller sent more than its limit (requests per minute, concurrent requests, or an
    engine's online queue); retry after `retry_after` seconds."""


class Unavailable(LoomstackError):
    """A dependency (engine, database) cannot serve now; retry later."""


class Internal(LoomstackError):
    """A bug or an unexpected failure."""


@dataclass(frozen=True)
class _Mapping:
    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str
    default_code: str


_TABLE: dict[type[LoomstackError], _Mapping] = {
    InvalidArgument: _Mapping(
        grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error", "invalid_request"
    ),
    NotFound: _Mapping(grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error", "not_found"),
    AlreadyExists: _Mapping(
        grpc.StatusCode.ALREADY_EXISTS, 409, "invalid_request_error", "already_exists"
    ),
    FailedPrecondition: _Mapping(
        grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error", "invalid_state"
    ),
    Unauthenticated: _Mapping(
        grpc.StatusCode.UNAUTHENTICATED, 401, "invalid_request_error", "invalid_api_key"
    ),
    PermissionDenied: _Mapping(
        grpc.StatusCode.PERMISSION_DENIED, 403, "invalid_request_error", "permission_denied"
    ),
    TooLarge: _Mapping(
        grpc.StatusCode.RESOURCE_EXHAUSTED, 413, "invalid_request_error", "too_large"
    ),
    RateLimited: _Mapping(
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "requests", "rate_limit_exceeded"
    ),
    Unavailable: _Mapping(grpc.StatusCode.UNAVAILABLE, 503, "server_error", "unavailable"),
    Internal: _Mapping(grpc.StatusCode.INTERNAL, 500, "server_error", "internal_error"),
}
# Several classes may share a gRPC code (TooLarge and RateLimited: RESOURCE_EXHAUSTED); the
# ErrorInfo's `kind` names the class, and the first class of a code is what a status without one
# (from gRPC itself, or an older peer) becomes.
_BY_GRPC: dict[grpc.StatusCode, type[LoomstackError]] = {}
for _cls, _m in _TABLE.items():
    _BY_GRPC.setdefault(_m.grpc_code, _cls)
_BY_KIND = {cls.__name__: cls for cls in _TABLE}


def mapping(error: LoomstackError) -> _Mapping:
    """The status codes and OpenAI error type of an error."""
    return _TABLE[type(error)]


def to_grpc_status(error: LoomstackError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes]]]:
    """Code, message and trailing metadata (with an ErrorInfo detail) for a gRPC abort."""
    m = mapping(error)
    info = error_details_pb2.ErrorInfo(reason=error.code, domain=_DOMAIN)
    info.metadata["kind"] = type(error).__name__
    if error.retry_after is not None:
        info.metadata["retry_after"] = f"{error.retry_after:g}"
    if error.param:
        info.metadata["param"] = error.param
    if error.line:
        info.metadata["line"] = str(error.line)
    status = status_pb2.Status(code=m.grpc_code.value[0], message=error.message)
    status.details.add().Pack(info)
    return m.grpc_code, error.message, ((DETAILS_KEY, status.SerializeToString()),)


def from_rpc_error(exc: grpc.RpcError) -> LoomstackError:
    """Rebuilds the domain error a service reported (gateway side)."""
    code = exc.code()  # type: ignore[attr-defined]
    message = exc.details() or code.name  # type: ignore[attr-defined]
    cls = _BY_GRPC.get(code)
    if cls is None:
        cls = Unavailable if code == grpc.StatusCode.DEADLINE_EXCEEDED else Internal
    reason, param, line, retry_after = None, None, 0, None
    trailers: Any = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in trailers:
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
                param = info.metadata.get("param")
                line = int(info.metadata.get("line", "0"))
                cls = _BY_KIND.get(info.metadata.get("kind", ""), cls)
                if "retry_after" in info.metadata:
                    retry_after = float(info.metadata["retry_after"])
    if code == grpc.StatusCode.UNAVAILABLE and reason is None:
        message = f"service unavailable: {message}"
    return cls(message, code=reason, param=param, line=line, retry_after=retry_after)


def openai_error_body(error: LoomstackError) -> dict[str, object]:
    """OpenAI's JSON error shape."""
    body: dict[str, object] = {
        "message": error.message,
        "type": mapping(error).openai_type,
        "param": error.param,
        "code": error.code,
    }
    if error.line:
        body["line"] = error.line
    return {"error": body}
