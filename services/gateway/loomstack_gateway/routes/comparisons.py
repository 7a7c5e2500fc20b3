"""`/v1/comparisons`: on-demand A/B comparisons of two models, with human votes.

Not an OpenAI API, so the shapes are Loomstack's, in OpenAI's style: objects with `object` and
unix-second timestamps, lists as `{"object": "list", "data", "first_id", "last_id",
"has_more"}` paged with `after` and `limit`, and OpenAI's error JSON. `win_rate` is model B's
win rate over model A: votes for B / (votes for A + votes for B), ties left out; null until a
vote preferred either model.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ConfigDict
from starlette.responses import Response

from loomstack.training.v1 import training_pb2
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.list_page import page

from ..auth import caller_of
from ..direct_routes import direct
from ..request_fields import NonNegativeInt32, NonNegativeInt64, RequestBody
from ..responses import OrjsonResponse
from ..settings import GatewaySettings
from ..shapes.comparisons import WINNERS, comparison_object, item_object, vote_object
from ..upstream import Training


class CreateComparisonBody(RequestBody):
    """The create-comparison body."""

    model_config = ConfigDict(extra="forbid")

    model_a: str
    model_b: str
    input_file_id: str
    max_tokens: NonNegativeInt32 | None = None
    metadata: dict[str, str] | None = None


class CreateVoteBody(RequestBody):
    """The vote body: `winner` is `a`, `b` or `tie`."""

    model_config = ConfigDict(extra="forbid")

    winner: str
    voter: str | None = None
    comment: str | None = None


def comparisons_router(training: Training, settings: GatewaySettings) -> APIRouter:
    """The comparison routes, bound to the training service's client."""
    router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"])
    timeout = settings.upstream_timeout_seconds

    @router.post("", summary="Compare two models on a prompt file")
    async def create_comparison(request: Request, body: CreateComparisonBody) -> Response:
        req = training_pb2.CreateComparisonRequest(
            model_a=body.model_a,
            model_b=body.model_b,
            input_file_id=body.input_file_id,
            metadata=body.metadata or {},
        )
        if body.max_tokens is not None:
            req.max_tokens = body.max_tokens
        # Creating reads and checks the whole input file: allow it more time.
        resp = await training.comparisons.CreateComparison(
            req, metadata=caller_of(request).metadata, timeout=max(timeout, 300)
        )
        return OrjsonResponse(comparison_object(resp))

    @router.get("", summary="List comparisons")
    async def list_comparisons(
        request: Request, after: str = "", limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> Response:
        resp = await training.comparisons.ListComparisons(
            training_pb2.ListComparisonsRequest(page_size=limit, page_token=after),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            page([comparison_object(c) for c in resp.comparisons], bool(resp.next_page_token))
        )

    @router.get("/{comparison_id}", summary="Retrieve a comparison")
    @direct
    async def get_comparison(request: Request, comparison_id: str) -> Response:
        resp = await training.comparisons.GetComparison(
            training_pb2.GetComparisonRequest(comparison_id=comparison_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(comparison_object(resp))

    @router.get("/{comparison_id}/items", summary="List a comparison's items")
    async def list_items(
        request: Request,
        comparison_id: str,
        after: Annotated[NonNegativeInt64 | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        resp = await training.comparisons.ListComparisonItems(
            training_pb2.ListComparisonItemsRequest(
                comparison_id=comparison_id,
                page_size=limit,
                page_token="" if after is None else str(after),
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        items = [item_object(comparison_id, i) for i in resp.items]
        return OrjsonResponse(page(items, bool(resp.next_page_token), key="index"))

    @router.post("/{comparison_id}/items/{index}/votes", summary="Vote on an item")
    async def create_vote(
        request: Request, comparison_id: str, index: NonNegativeInt64, body: CreateVoteBody
    ) -> Response:
        winner = WINNERS.get(body.winner.strip().lower())
        if winner is None:
            raise InvalidArgument(
                f"winner is {body.winner!r}: use one of a, b or tie", param="winner"
            )
        resp = await training.comparisons.CreateVote(
            training_pb2.CreateVoteRequest(
                comparison_id=comparison_id,
                index=index,
                winner=winner,
                voter=body.voter or "",
                comment=body.comment or "",
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(vote_object(resp))

    return router
