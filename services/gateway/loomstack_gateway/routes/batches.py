"""`/v1/batches`: OpenAI's Batch API over the inference service's BatchService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ConfigDict, Field
from starlette.responses import Response

from loomstack.inference.v1 import batches_pb2

from ..auth import caller_of
from ..direct_routes import direct
from ..request_fields import Int32, RequestBody
from ..responses import OrjsonResponse
from ..settings import GatewaySettings
from ..shapes import inference as shapes
from ..upstream import Inference


class CreateBatchBody(RequestBody):
    """OpenAI's create-batch body, plus our `priority`."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    # The inference service refuses other values with its own codes (`invalid_endpoint`,
    # `invalid_completion_window`, `invalid_priority`); the document says which it takes.
    endpoint: str = Field(json_schema_extra={"enum": ["/v1/chat/completions"]})
    completion_window: str = Field(json_schema_extra={"enum": ["24h"]})
    metadata: dict[str, str] | None = None
    priority: Int32 = Field(
        0,
        description="Loomstack extension: -1 low, 0 normal, 1 high.",
        json_schema_extra={"minimum": -1, "maximum": 1},
    )


def batches_router(inference: Inference, settings: GatewaySettings) -> APIRouter:
    """The Batch routes, bound to the inference service's client."""
    router = APIRouter(prefix="/v1/batches", tags=["batches"])
    timeout = settings.upstream_timeout_seconds

    @router.post("", summary="Create a batch")
    async def create_batch(request: Request, body: CreateBatchBody) -> Response:
        resp = await inference.batches.CreateBatch(
            shapes.create_batch_request(
                input_file_id=body.input_file_id,
                endpoint=body.endpoint,
                completion_window=body.completion_window,
                metadata=body.metadata,
                priority=body.priority,
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.batch_object(resp))

    @router.get("", summary="List batches")
    async def list_batches(
        request: Request,
        after: str = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        resp = await inference.batches.ListBatches(
            batches_pb2.ListBatchesRequest(page_size=limit, page_token=after),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.batch_list(resp))

    @router.get("/{batch_id}", summary="Retrieve a batch")
    @direct
    async def get_batch(request: Request, batch_id: str) -> Response:
        resp = await inference.batches.GetBatch(
            batches_pb2.GetBatchRequest(batch_id=batch_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.batch_object(resp))

    @router.post("/{batch_id}/cancel", summary="Cancel a batch")
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        resp = await inference.batches.CancelBatch(
            batches_pb2.CancelBatchRequest(batch_id=batch_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.batch_object(resp))

    return router
