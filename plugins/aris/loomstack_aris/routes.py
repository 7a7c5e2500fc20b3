"""The conquest API's HTTP routes, which the gateway serves under `/v1/plugins/aris` behind its
API-key auth, rate limits and OpenAI-shaped errors. Each route converts JSON to one call of the
ConquestService (hosted by curation) and its answer back to an OpenAI-style object.

Names a request may carry (conquest types, statuses, results) are accepted in any case; an
unknown one is a 400 naming the field and listing the valid values.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from loomstack.aris.v1 import conquests_pb2, conquests_pb2_grpc
from loomstack_kit.list_page import page
from loomstack_kit.plugins import RouteContext

from .examples import icl_format
from .proto_enums import RESULT, STATUS, TYPE, number
from .shapes import (
    conquest_object,
    health_object,
    icl_example_object,
    rating_object,
    victory_sync_object,
)
from .terms import ConquestResult, ConquestStatus, ConquestType

INT64_MAX = 2**63 - 1
Text = Annotated[str, Field(max_length=65536)]
Name = Annotated[str, Field(max_length=512)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CreateConquestBody(_Body):
    """POST /conquests."""

    type: Name
    title: Name = ""
    description: Text = ""
    status: Name = ConquestStatus.DRAFT.value
    philosopher: Name = ""
    domain: Name = ""
    use_as_example: bool = False


class AnnotateBody(_Body):
    """POST /conquests/{id}/annotations."""

    rating: Annotated[int, Field(ge=1, le=5)] | None = None
    feedback: Text = ""
    analysis_type: Annotated[str, Field(max_length=64)] = ""
    is_gold_star: bool = False
    use_as_sample_response: bool = False
    include_in_training: bool = True
    ls_task_id: Annotated[int, Field(ge=0, le=INT64_MAX)] = 0
    ls_annotation_id: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None


class ResultBody(_Body):
    """POST /conquests/{id}/result."""

    result: Name
    result_notes: Text = ""
    evaluated_by: Name = ""
    use_as_example: bool | None = None


def build_routes(context: RouteContext) -> APIRouter:
    """The conquest routes, over the curation channel the gateway hands the plugin."""
    router = APIRouter(tags=["aris"])

    def stub() -> Any:
        return conquests_pb2_grpc.ConquestServiceStub(context.channel("curation"))

    def call(request: Request) -> dict[str, Any]:
        return {"metadata": context.metadata(request), "timeout": context.timeout}

    @router.get("/conquests", summary="List conquests")
    async def list_conquests(
        request: Request,
        type: Name = "",
        status: Name = "",
        result: Name = "",
        philosopher: Name = "",
        user_email: Name = "",
        domain: Name = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Name = "",
    ) -> dict[str, Any]:
        resp = await stub().ListConquests(
            conquests_pb2.ListConquestsRequest(
                page_size=limit,
                page_token=after,
                type=number(ConquestType, TYPE, type, "type"),
                status=number(ConquestStatus, STATUS, status, "status"),
                result=number(ConquestResult, RESULT, result, "result"),
                philosopher=philosopher or user_email,
                domain=domain,
            ),
            **call(request),
        )
        return page([conquest_object(c) for c in resp.conquests], bool(resp.next_page_token))

    @router.post("/conquests", summary="Create a conquest")
    async def create_conquest(request: Request, body: CreateConquestBody) -> dict[str, Any]:
        resp = await stub().CreateConquest(
            conquests_pb2.CreateConquestRequest(
                conquest=conquests_pb2.Conquest(
                    type=number(ConquestType, TYPE, body.type, "type"),
                    title=body.title,
                    description=body.description,
                    status=number(ConquestStatus, STATUS, body.status or "DRAFT", "status"),
                    philosopher=body.philosopher,
                    domain=body.domain,
                    use_as_example=body.use_as_example,
                )
            ),
            **call(request),
        )
        return conquest_object(resp)

    @router.get("/conquests/{conquest_id}", summary="Retrieve a conquest")
    async def get_conquest(request: Request, conquest_id: Name) -> dict[str, Any]:
        resp = await stub().GetConquest(
            conquests_pb2.GetConquestRequest(conquest_id=conquest_id), **call(request)
        )
        return conquest_object(resp)

    @router.post("/conquests/{conquest_id}/annotations", summary="Rate a conquest's analysis")
    async def annotate(request: Request, conquest_id: Name, body: AnnotateBody) -> dict[str, Any]:
        message = conquests_pb2.AnnotateConquestRequest(
            conquest_id=conquest_id,
            feedback=body.feedback,
            analysis_type=body.analysis_type,
            is_gold_star=body.is_gold_star,
            use_as_sample_response=body.use_as_sample_response,
            include_in_training=body.include_in_training,
            ls_task_id=body.ls_task_id,
            ls_annotation_id=body.ls_annotation_id or 0,
        )
        if body.rating is not None:
            message.rating = body.rating
        resp = await stub().AnnotateConquest(message, **call(request))
        return rating_object(resp)

    @router.post("/conquests/{conquest_id}/result", summary="Set a conquest's verdict")
    async def set_result(request: Request, conquest_id: Name, body: ResultBody) -> dict[str, Any]:
        message = conquests_pb2.SetConquestResultRequest(
            conquest_id=conquest_id,
            result=number(ConquestResult, RESULT, body.result, "result"),
            result_notes=body.result_notes,
            evaluated_by=body.evaluated_by,
        )
        if body.use_as_example is not None:
            message.use_as_example = body.use_as_example
        resp = await stub().SetConquestResult(message, **call(request))
        return conquest_object(resp)

    @router.post("/sync/victories", summary="Retry the VICTORY → gold star sync now")
    async def sync_victories(request: Request) -> dict[str, Any]:
        resp = await stub().SyncVictories(conquests_pb2.SyncVictoriesRequest(), **call(request))
        return victory_sync_object(resp)

    @router.get("/icl_examples", summary="Eidos in-context-learning examples")
    async def icl_examples(
        request: Request,
        user_email: Name = "",
        philosopher: Name = "",
        domain: Name = "",
        conquest_type: Name = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 5,
        format: Name = "messages",
    ) -> dict[str, Any]:
        fmt = icl_format(format)
        resp = await stub().ListIclExamples(
            conquests_pb2.ListIclExamplesRequest(
                philosopher=philosopher or user_email,
                domain=domain,
                type=number(ConquestType, TYPE, conquest_type, "conquest_type"),
                limit=limit,
                format=(
                    conquests_pb2.ICL_EXAMPLE_FORMAT_TEXT
                    if fmt == "text"
                    else conquests_pb2.ICL_EXAMPLE_FORMAT_MESSAGES
                ),
            ),
            **call(request),
        )
        return {
            "object": "list",
            "data": [icl_example_object(e, fmt) for e in resp.examples],
            "has_more": False,
        }

    @router.get("/health", summary="The Aristotle database's state")
    async def health(request: Request) -> dict[str, Any]:
        resp = await stub().GetArisHealth(conquests_pb2.GetArisHealthRequest(), **call(request))
        return health_object(resp)

    return router
