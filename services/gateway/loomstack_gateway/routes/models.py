"""`/v1/models`: OpenAI's Models API over the inference service's model registry."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from loomstack.inference.v1 import models_pb2

from ..auth import caller_of
from ..direct_routes import direct
from ..responses import OrjsonResponse
from ..settings import GatewaySettings
from ..shapes import inference as shapes
from ..upstream import Inference


def models_router(inference: Inference, settings: GatewaySettings) -> APIRouter:
    """The Models routes, bound to the inference service's client."""
    router = APIRouter(prefix="/v1/models", tags=["models"])
    timeout = settings.upstream_timeout_seconds

    @router.get("", summary="List models")
    @direct
    async def list_models(request: Request) -> Response:
        resp = await inference.models.ListModels(
            models_pb2.ListModelsRequest(), metadata=caller_of(request).metadata, timeout=timeout
        )
        return OrjsonResponse(shapes.model_list(resp))

    # `:path`: model ids may contain slashes (`org/name`).
    @router.get("/{model_id:path}", summary="Retrieve a model")
    @direct
    async def get_model(request: Request, model_id: str) -> Response:
        resp = await inference.models.GetModel(
            models_pb2.GetModelRequest(model_id=model_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.model_object(resp))

    @router.delete("/{model_id:path}", summary="Delete a fine-tuned model")
    async def delete_model(request: Request, model_id: str) -> Response:
        resp = await inference.models.DeleteModel(
            models_pb2.DeleteModelRequest(model_id=model_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse({"id": resp.model_id, "object": "model", "deleted": resp.deleted})

    return router
