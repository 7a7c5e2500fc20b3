"""The FastAPI app: `create_app(settings)` wires the upstream clients, routes and middleware.

Middleware is pure ASGI so that the hot path pays a few function calls, not a
`BaseHTTPMiddleware` task per request. From the outside in: request ids (every response, a
refusal too, carries `x-request-id`), metrics, body limits (`body_limits.py`), auth, the per-key
rate and concurrency limits (`key_limits.py`, after auth: they count keys), then the direct
routes: the few polled routes marked `@direct` skip FastAPI's request handling (see
`direct_routes.py`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from loomstack_kit.errors import Unavailable
from loomstack_kit.identity import GATEWAY, IdentitySigner
from loomstack_kit.plugins import load_plugins
from loomstack_kit.tracing import configure_tracing

from .auth import ApiKeys, AuthMiddleware
from .body_limits import BodyLimits
from .direct_routes import DirectRoutes, check_direct_routes, direct
from .http_errors import error_response, install_error_handlers
from .key_limits import KeyLimits, request_window
from .metrics import GatewayMetrics, MetricsMiddleware
from .openapi_document import build_document
from .plugin_routes import mount_plugin_routes
from .request_ids import RequestIds, install_log_filter, request_id_of
from .responses import OrjsonResponse
from .routes.admin import admin_router, open_admin
from .routes.batches import batches_router
from .routes.chat import chat_router
from .routes.comparisons import comparisons_router
from .routes.curation import curation_router
from .routes.files import files_router
from .routes.fine_tuning import fine_tuning_router
from .routes.models import models_router
from .routes.plugins import plugins_router
from .settings import GatewaySettings
from .upstream import Curation, Inference, Training

log = logging.getLogger(__name__)

SERVICE_NAME = "loomstack-gateway"


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Builds the gateway app; the upstream channel opens when the app starts."""
    settings = settings or GatewaySettings()
    tracing = settings.otel_exporter != "none"
    configure_tracing(SERVICE_NAME, settings.otel_exporter)
    inference = Inference(
        settings.inference_address, settings, max_message_bytes=settings.max_message_bytes
    )
    curation = Curation(settings.curation_address, settings)
    training = Training(settings.training_address, settings)
    signer = IdentitySigner(settings.secret(), GATEWAY)
    # Before anything starts: a required plugin that cannot load stops the gateway here.
    plugins = load_plugins(settings.enabled_plugins(), settings.required_plugins())
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await inference.open()
        await curation.open()
        await training.open()
        log.info("gateway started", extra={"inference": settings.inference_address})
        try:
            yield
        finally:
            await training.close()
            await curation.close()
            await inference.close()

    app = FastAPI(
        title="Loomstack",
        summary="OpenAI-compatible batch inference API.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        redoc_url=None,
    )
    install_error_handlers(app)
    for router in (files_router, batches_router, models_router, chat_router):
        app.include_router(router(inference, settings))
    app.include_router(curation_router(inference, curation, settings))
    app.include_router(fine_tuning_router(training, settings))
    app.include_router(comparisons_router(training, settings))
    app.include_router(admin_router(open_admin(settings)))
    plugin_statuses = mount_plugin_routes(
        app,
        plugins,
        inference=inference,
        curation=curation,
        training=training,
        timeout=settings.upstream_timeout_seconds,
        required=frozenset(settings.required_plugins()),
    )
    app.include_router(plugins_router(curation, plugin_statuses, settings))

    @app.get("/healthz", tags=["health"], summary="The process answers")
    @direct
    async def healthz() -> Response:
        return OrjsonResponse({"status": "ok"})

    @app.get("/readyz", tags=["health"], summary="The inference service is ready")
    @direct
    async def readyz(request: Request) -> Response:
        ready, why = await inference.ready(settings.ready_timeout_seconds)
        if not ready:
            # `why` is gRPC's text (the upstream's address): for the log, not the client.
            request_id = request_id_of(request.scope)
            log.warning("not ready", extra={"why": why, "request_id": request_id})
            return error_response(
                Unavailable(
                    f"the inference service is not ready (request id {request_id})",
                    code="not_ready",
                )
            )
        return OrjsonResponse({"status": "ready"})

    app.add_api_route(
        "/metrics", metrics.endpoint, methods=["GET"], tags=["health"], include_in_schema=False
    )
    # A route marked @direct that the layer cannot serve stops the app here, not at its first
    # request. Added first, so innermost: every other layer wraps the direct routes too.
    check_direct_routes(app.routes)
    app.add_middleware(DirectRoutes, fastapi_app=app)
    app.add_middleware(
        KeyLimits,
        window=request_window(
            settings.rate_limit_per_minute,
            settings.rate_limit_storage,
            settings.rate_limit_key_prefix,
        ),
        concurrency=settings.concurrency_limit,
    )
    app.add_middleware(AuthMiddleware, keys=ApiKeys.from_settings(settings, signer))
    app.add_middleware(
        BodyLimits,
        max_json_bytes=settings.max_json_body_bytes,
        drain_bytes=settings.max_drain_bytes,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIds)
    install_log_filter()
    app.openapi = _openapi_with_bearer(app)  # type: ignore[method-assign]
    if tracing:
        _instrument(app)
    return app


def _openapi_with_bearer(app: FastAPI) -> Any:
    """The document of openapi_document.py, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    return openapi


def _instrument(app: FastAPI) -> None:
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        log.warning("opentelemetry-instrumentation-fastapi is not installed: no HTTP spans")
        return
    # No span per ASGI receive/send message: an upload would make thousands.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
    )
