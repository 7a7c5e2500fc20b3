"""The curation service's HTTP side, served next to its gRPC server: Label Studio's webhook
(`POST /labelstudio/webhook`, its shared secret header) and the ML backend (under `/ml`: Label
Studio is given `<public_url>/ml` as the backend URL and calls `/ml/health`, `/ml/setup`,
`/ml/predict` and `/ml/webhook`; every one needs the basic auth credentials, ml_auth.py).
Every refusal is OpenAI's error shape."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from loomstack_kit.errors import (
    InvalidArgument,
    LoomstackError,
    NotFound,
    Unauthenticated,
    mapping,
    openai_error_body,
)

from . import ml_auth
from .annotations import AnnotationStore
from .ml_backend import MLBackend
from .webhook import SECRET_HEADER, handle_event, verify_secret

log = logging.getLogger(__name__)
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{ml_auth.REALM}"'}


def _error(error: LoomstackError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        openai_error_body(error), status_code=mapping(error).http_status, headers=headers
    )


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None


def create_app(
    store: AnnotationStore,
    backend: MLBackend,
    webhook_secret: str,
    ml_credentials: ml_auth.Credentials | None,
) -> FastAPI:
    """The ASGI app; `ml_credentials` None refuses the ML backend's routes."""
    app = FastAPI(
        title="Loomstack curation (Label Studio endpoints)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Malformed headers are refused by FastAPI's parser itself (HTTPException, below).
    basic = HTTPBasic(auto_error=False, realm=ml_auth.REALM)

    async def ml_caller(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:  # noqa: B008
        ml_auth.check(ml_credentials, credentials)

    authenticated = [Depends(ml_caller)]

    @app.exception_handler(LoomstackError)
    async def _domain_error(request: Request, exc: LoomstackError) -> JSONResponse:
        challenge = isinstance(exc, Unauthenticated) and request.url.path.startswith("/ml/")
        return _error(exc, CHALLENGE if challenge else None)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own refusals: no such route, a wrong method, a malformed basic auth.
        kind = {401: Unauthenticated, 404: NotFound}.get(exc.status_code, InvalidArgument)
        return JSONResponse(
            openai_error_body(kind(str(exc.detail))),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    @app.post("/labelstudio/webhook")
    async def labelstudio_webhook(request: Request) -> JSONResponse:
        # The secret first: nothing of an unauthenticated request is read or recorded.
        verify_secret(webhook_secret, request.headers.get(SECRET_HEADER))
        payload = await _json(request)
        outcome = await run_in_threadpool(handle_event, store, payload)
        log.info("webhook", extra=outcome.__dict__)
        return JSONResponse(outcome.__dict__)

    # Label Studio sends the credentials to the health check too, and tells a person whose
    # credentials are wrong so only when the health check refuses them.
    @app.get("/ml/health", dependencies=authenticated)
    @app.get("/ml/", dependencies=authenticated)
    def ml_health() -> dict[str, Any]:
        return backend.health()

    @app.post("/ml/setup", dependencies=authenticated)
    async def ml_setup(request: Request) -> dict[str, Any]:
        payload = await _json(request)
        return await run_in_threadpool(backend.setup, payload if isinstance(payload, dict) else {})

    @app.post("/ml/predict", dependencies=authenticated)
    async def ml_predict(request: Request) -> dict[str, Any]:
        payload = await _json(request)
        if not isinstance(payload, dict):
            raise InvalidArgument("expected a JSON object with `tasks`")
        return await run_in_threadpool(backend.predict, payload)

    @app.post("/ml/webhook", dependencies=authenticated)
    async def ml_webhook(request: Request) -> JSONResponse:
        # Label Studio tells the backend about new annotations (to train on); we learn about
        # annotations from the project webhook and the reconcile, so acknowledge only.
        payload = await _json(request)
        action = payload.get("action") if isinstance(payload, dict) else None
        return JSONResponse({"action": action, "handled": False}, status_code=201)

    return app
