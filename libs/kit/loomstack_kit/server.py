"""gRPC server bootstrap: health, reflection, tracing, error mapping and graceful shutdown.

A service builds a `GrpcServer` with its settings and a list of `(add_to_server, servicer,
service_full_name)` registrations, then awaits `serve()`. Health uses grpc.health.v1 with the
service names Kubernetes probes ask for:

- `liveness`  — SERVING while the event loop answers (set at start, never changed);
- `startup`   — SERVING once the service has finished loading (e.g. the engine is up);
- `readiness` — SERVING while the service can take traffic (dependencies reachable); set to
  NOT_SERVING first on SIGTERM so load balancers drain before the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from .errors import Internal, InvalidArgument, LoomstackError, Unauthenticated, to_grpc_status
from .identity import IdentityVerifier, request_id_of
from .ids import new_request_id
from .request_text import reject_nul
from .settings import ServiceSettings
from .tracing import server_interceptors

log = logging.getLogger(__name__)

LIVENESS, READINESS, STARTUP = "liveness", "readiness", "startup"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Registration:
    """One servicer to add to the server."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str


async def _abort(context: grpc.aio.ServicerContext, error: LoomstackError) -> None:
    code, message, trailers = to_grpc_status(error)
    await context.abort(code, message, trailing_metadata=trailers)


def _internal(context: grpc.aio.ServicerContext, what: str) -> Internal:
    """Logs the exception being handled under a request id; the caller gets only the id (an
    exception's text may carry paths, addresses or data of another project)."""
    request_id = request_id_of(context) or new_request_id()
    log.exception(what, extra={"request_id": request_id})
    return Internal(f"internal error (request id {request_id})")


@dataclass(frozen=True)
class _Undecodable:
    """A request message protobuf could not parse (bytes that are not the message, or a
    string field that is not UTF-8)."""

    error: str


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, returning `_Undecodable` instead of raising: a parse failure inside
    gRPC's own code reaches the client as UNKNOWN, here it becomes INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(type(exc).__name__)

    return decode


def _undecodable() -> InvalidArgument:
    return InvalidArgument(
        "the request is not a valid message of this method (string fields must be UTF-8)",
        code="invalid_message",
    )


def _checked(request_or_iterator: Any, streaming: bool) -> Any:
    """The request itself, or for a request stream one that raises at an undecodable message;
    a string field holding NUL is refused either way (request_text.py)."""
    if not streaming:
        if isinstance(request_or_iterator, _Undecodable):
            raise _undecodable()
        reject_nul(request_or_iterator)
        return request_or_iterator

    async def messages() -> AsyncIterator[Any]:
        async for message in request_or_iterator:
            if isinstance(message, _Undecodable):
                raise _undecodable()
            reject_nul(message)
            yield message

    return messages()


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], streaming: bool = False
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(_checked(request_or_iterator, streaming), context)
        except LoomstackError as error:
            await _abort(context, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            await _abort(context, _internal(context, "unhandled error in RPC"))

    return wrapper


def _wrap_stream(
    behavior: Callable[..., Any], streaming: bool = False
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in behavior(_checked(request_or_iterator, streaming), context):
                yield item
        except LoomstackError as error:
            await _abort(context, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            await _abort(context, _internal(context, "unhandled error in streaming RPC"))

    return wrapper


def _same_kind(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> Any:
    """A method handler of `handler`'s kind (unary/stream either way) running `behavior`."""
    if handler.unary_unary:
        factory = grpc.unary_unary_rpc_method_handler
    elif handler.stream_unary:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.unary_stream:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.stream_stream_rpc_method_handler
    return factory(behavior, handler.request_deserializer, handler.response_serializer)


# Probes and tooling hold no secret: health checks and reflection need no identity.
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class IdentityInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection whose caller identity is not signed with
    the installation's secret (UNAUTHENTICATED): the one place identities are checked."""

    def __init__(self, verifier: IdentityVerifier) -> None:
        self.verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        try:
            self.verifier.verify(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        except Unauthenticated as error:
            log.warning(
                "refused a call without a valid identity",
                extra={"method": method, "reason": error.code},
            )
            return _same_kind(handler, _refuse(error, streaming=bool(handler.request_streaming)))
        return handler


def _refuse(error: Unauthenticated, *, streaming: bool) -> Callable[..., Any]:
    async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        if streaming:
            # grpc.aio turns an abort while the client is still sending into INTERNAL; a
            # bounded read lets the status through for the usual small stream.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    async for _ in request_or_iterator:
                        pass
        await _abort(context, error)

    return refuse


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors raised by servicers into gRPC statuses (the one error table)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        decode = _lenient(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary), decode, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, streaming=True),
                decode,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream), decode, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, streaming=True),  # type: ignore[arg-type]
            decode,
            handler.response_serializer,
        )


class GrpcServer:
    """A grpc.aio server with health, reflection, tracing and graceful shutdown."""

    def __init__(
        self,
        settings: ServiceSettings,
        registrations: Iterable[Registration],
        *,
        on_shutdown: Iterable[Callable[[], Awaitable[None]]] = (),
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.settings = settings
        self.health = HealthServicer()
        self._registrations = list(registrations)
        self._on_shutdown = list(on_shutdown)
        self._stopping = asyncio.Event()
        verifier = IdentityVerifier(settings.secret())
        self.server = grpc.aio.server(
            interceptors=[
                *server_interceptors(),
                IdentityInterceptor(verifier),
                ErrorInterceptor(),
            ],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        for reg in self._registrations:
            reg.add_to_server(reg.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [r.full_name for r in self._registrations]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        address = f"{settings.host}:{settings.port}"
        tls = settings.tls()
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            cert, key, ca = tls
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            )
            self.port = self.server.add_secure_port(address, credentials)
        # Kubernetes' gRPC probes speak no TLS: with mutual TLS, health alone is also served in
        # plaintext on its own port (`health_port`).
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        if tls is not None and settings.health_port:
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(
                f"{settings.host}:{settings.health_port}"
            )

    async def set_ready(self, ready: bool) -> None:
        """Readiness (and the overall "" status and each service name) follow this."""
        status = _SERVING if ready else _NOT_SERVING
        for name in ("", READINESS, *(r.full_name for r in self._registrations)):
            await self.health.set(name, status)

    async def set_started(self) -> None:
        """Marks startup done (the Kubernetes startupProbe passes from now on)."""
        await self.health.set(STARTUP, _SERVING)

    async def start(self) -> None:
        """Starts serving; liveness is SERVING, startup and readiness are not yet."""
        await self.health.set(LIVENESS, _SERVING)
        await self.health.set(STARTUP, _NOT_SERVING)
        await self.set_ready(False)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        if self.settings.port_file:
            self.settings.port_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.settings.port_file.with_suffix(".tmp")
            tmp.write_text(str(self.port))
            tmp.replace(self.settings.port_file)
        log.info("gRPC server listening", extra={"port": self.port})

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT start a graceful stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)

    def request_stop(self) -> None:
        """Starts a graceful stop (tests, or an internal fatal error)."""
        self._stopping.set()

    async def wait_for_stop(self) -> None:
        """Blocks until a stop is requested, then drains and stops."""
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Readiness NOT_SERVING, shutdown hooks, the rest of `drain_seconds`, then `stop(grace)`
        for in-flight RPCs."""
        log.info("graceful stop: readiness NOT_SERVING")
        loop = asyncio.get_running_loop()
        drained_at = loop.time() + self.settings.drain_seconds
        await self.set_ready(False)
        await self.health.enter_graceful_shutdown()
        for hook in self._on_shutdown:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        # `stop` refuses new RPCs at once, health checks included: until then NOT_SERVING is
        # what a health-checking client or load balancer is told.
        await asyncio.sleep(max(0.0, drained_at - loop.time()))
        await self.server.stop(self.settings.grace_seconds)
        if self.health_server is not None:
            await self.health_server.stop(0)
        log.info("gRPC server stopped")
