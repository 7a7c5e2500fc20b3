"""OpenTelemetry tracing: one setup call per process and the gRPC interceptors.

`otel_exporter` picks where spans go: `none`, `console`, `otlp` (the standard OTEL_EXPORTER_OTLP_*
variables apply) or `jsonl:<path>` (one finished span per line; used by tests to check that a
request is one trace across the gateway, the inference service and the database).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

_configured = False


class JsonlSpanExporter(SpanExporter):
    """Appends each span as one JSON line to a file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                orjson.dumps(
                    {
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
                        "span_id": format(ctx.span_id, "016x") if ctx else None,
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "attributes": dict(span.attributes or {}),
                    },
                    default=str,
                )
            )
        with self._lock, open(self._path, "ab") as out:
            out.write(b"\n".join(lines) + b"\n")
        return SpanExportResult.SUCCESS


def configure_tracing(service: str, exporter: str) -> None:
    """Installs the global tracer provider once (no-op for `none`)."""
    global _configured
    if _configured or exporter == "none":
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter.startswith("jsonl:"):
        provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(exporter[6:])))
    else:
        raise ValueError(f"unknown otel_exporter {exporter!r}: use none, console, otlp, jsonl:PATH")
    trace.set_tracer_provider(provider)
    _configured = True


def tracing_enabled() -> bool:
    """Whether `configure_tracing` installed an exporter in this process."""
    return _configured


def server_interceptors() -> list[Any]:
    """gRPC server interceptors that continue the caller's trace (none when tracing is off:
    an interceptor costs every RPC a wrapper and a context switch for spans nobody exports)."""
    if not _configured:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[Any]:
    """gRPC client interceptors that propagate the current trace (none when tracing is off)."""
    if not _configured:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def instrument_sqlalchemy(engine: Any) -> None:
    """Adds a span per SQL statement, as a child of the current RPC's span (tracing on only)."""
    if not _configured:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine)


def trace_channel(channel: Any) -> Any:
    """A blocking channel that propagates the current trace (the channel itself when tracing is
    off). OpenTelemetry's blocking client interceptor is not one of grpc's interceptor classes:
    it is applied with its own `grpcext.intercept_channel`, never `grpc.intercept_channel`
    (which refuses it with a TypeError)."""
    if not _configured:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    return intercept_channel(channel, client_interceptor())
