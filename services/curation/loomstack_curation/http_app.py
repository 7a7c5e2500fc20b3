"""The curation service's HTTP side, served next to its gRPC server: Label Studio's webhook
(`POST /labelstudio/webhook`) and the ML backend (under `/ml`: Label Studio is given
`<public_url>/ml` as the backend URL and calls `/ml/health`, `/ml/setup`, `/ml/predict` and
`/ml/webhook`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from loomstack_kit.errors import InvalidArgument, LoomstackError, mapping, openai_error_body

from .annotations import AnnotationStore
from .ml_backend import MLBackend
from .webhook import SECRET_HEADER, handle_event, verify_secret

log = logging.getLogger(__name__)


def _error(error: LoomstackError) -> JSONResponse:
    return JSONResponse(openai_error_body(error), status_code=mapping(error).http_status)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None


def create_app(store: AnnotationStore, backend: MLBackend, webhook_secret: str) -> FastAPI:
    """The ASGI app."""
    app = FastAPI(
        title="Loomstack curation (Label Studio endpoints)", docs_url=None, redoc_url=None
    )

    @app.exception_handler(LoomstackError)
    async def _domain_error(_request: Request, exc: LoomstackError) -> JSONResponse:
        return _error(exc)

    @app.post("/labelstudio/webhook")
    async def labelstudio_webhook(request: Request) -> JSONResponse:
        # The secret first: nothing of an unauthenticated request is read or recorded.
        verify_secret(webhook_secret, request.headers.get(SECRET_HEADER))
        payload = await _json(request)
        outcome = await run_in_threadpool(handle_event, store, payload)
        log.info("webhook", extra=outcome.__dict__)
        return JSONResponse(outcome.__dict__)

    @app.get("/ml/health")
    @app.get("/ml/")
    def ml_health() -> dict[str, Any]:
        return backend.health()

    @app.post("/ml/setup")
    async def ml_setup(request: Request) -> dict[str, Any]:
        payload = await _json(request)
        return await run_in_threadpool(backend.setup, payload if isinstance(payload, dict) else {})

    @app.post("/ml/predict")
    async def ml_predict(request: Request) -> dict[str, Any]:
        payload = await _json(request)
        if not isinstance(payload, dict):
            raise InvalidArgument("expected a JSON object with `tasks`")
        return await run_in_threadpool(backend.predict, payload)

    @app.post("/ml/webhook")
    async def ml_webhook(request: Request) -> JSONResponse:
        # Label Studio tells the backend about new annotations (to train on); we learn about
        # annotations from the project webhook and the reconcile, so acknowledge only.
        payload = await _json(request)
        action = payload.get("action") if isinstance(payload, dict) else None
        return JSONResponse({"action": action, "handled": False}, status_code=201)

    return app
