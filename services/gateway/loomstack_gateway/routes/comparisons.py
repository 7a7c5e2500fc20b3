"""`/v1/comparisons`: on-demand A/B comparisons of two models, with human votes.

Not an OpenAI API, so the shapes are Loomstack's, in OpenAI's style: objects with `object` and
unix-second timestamps, lists as `{"object": "list", "data", "first_id", "last_id",
"has_more"}` paged with `after` and `limit`, and OpenAI's error JSON. `win_rate` is model B's
win rate over model A: votes for B / (votes for A + votes for B), ties left out; null until a
vote preferred either model.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from google.protobuf.message import Message
from pydantic import ConfigDict
from starlette.responses import Response

from loomstack.training.v1 import training_pb2
from loomstack_kit.errors import InvalidArgument

from .auth import caller_of
from .direct_routes import direct
from .request_fields import NonNegativeInt32, NonNegativeInt64, RequestBody
from .responses import OrjsonResponse
from .settings import GatewaySettings
from .upstream import Training

_PREFIX = "COMPARISON_STATUS_"
COMPARISON_STATUS_NAMES: dict[int, str] = {
    value: name.removeprefix(_PREFIX).lower()
    for name, value in training_pb2.ComparisonStatus.items()
    if value != training_pb2.COMPARISON_STATUS_UNSPECIFIED
}
WINNERS = {
    "a": training_pb2.VOTE_WINNER_A,
    "b": training_pb2.VOTE_WINNER_B,
    "tie": training_pb2.VOTE_WINNER_TIE,
}
_WINNER_NAMES = {value: name for name, value in WINNERS.items()}


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


def _seconds(msg: Message, field: str) -> int | None:
    if not msg.HasField(field):
        return None
    seconds: int = getattr(msg, field).seconds
    return seconds


def _scores(msg: Message) -> dict[str, Any] | None:
    if not (msg.HasField("scores_a") and msg.HasField("scores_b")):
        return None
    a, b = msg.scores_a, msg.scores_b  # type: ignore[attr-defined]
    return {
        "model_a": {"exact_match": a.exact_match, "token_overlap": a.token_overlap},
        "model_b": {"exact_match": b.exact_match, "token_overlap": b.token_overlap},
    }


def _votes(v: training_pb2.VoteCounts) -> dict[str, int]:
    return {"a": v.a, "b": v.b, "tie": v.tie}


def comparison_object(c: training_pb2.Comparison) -> dict[str, Any]:
    """The `comparison` object."""
    return {
        "object": "comparison",
        "id": c.id,
        "model_a": c.model_a,
        "model_b": c.model_b,
        "input_file_id": c.input_file_id,
        "max_tokens": c.max_tokens,
        "status": COMPARISON_STATUS_NAMES.get(c.status, "queued"),
        "created_at": c.create_time.seconds,
        "started_at": _seconds(c, "start_time"),
        "finished_at": _seconds(c, "finish_time"),
        "item_count": c.item_count,
        "scored_item_count": c.scored_item_count,
        "scores": _scores(c),
        "votes": _votes(c.votes),
        "win_rate": c.win_rate if c.HasField("win_rate") else None,
        "error": (
            {"code": c.error.code, "message": c.error.message} if c.HasField("error") else None
        ),
        "project": c.project,
        "metadata": dict(c.metadata) or None,
    }


def item_object(comparison_id: str, i: training_pb2.ComparisonItem) -> dict[str, Any]:
    """The `comparison.item` object: one prompt, both answers, scores and votes."""
    return {
        "object": "comparison.item",
        "comparison_id": comparison_id,
        "index": i.index,
        "line": i.line,
        "messages": [{"role": m.role, "content": m.content} for m in i.messages],
        "reference": i.reference if i.HasField("reference") else None,
        "answer_a": i.answer_a,
        "answer_b": i.answer_b,
        "error_a": i.error_a or None,
        "error_b": i.error_b or None,
        "scores": _scores(i),
        "votes": _votes(i.votes),
    }


def vote_object(v: training_pb2.Vote) -> dict[str, Any]:
    """The `comparison.vote` object."""
    return {
        "object": "comparison.vote",
        "id": v.id,
        "comparison_id": v.comparison_id,
        "index": v.index,
        "winner": _WINNER_NAMES.get(v.winner),
        "voter": v.voter or None,
        "comment": v.comment or None,
        "created_at": v.create_time.seconds,
    }


def _list(data: list[dict[str, Any]], has_more: bool, key: str = "id") -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0][key] if data else None,
        "last_id": data[-1][key] if data else None,
        "has_more": has_more,
    }


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
            _list([comparison_object(c) for c in resp.comparisons], bool(resp.next_page_token))
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
        return OrjsonResponse(_list(items, bool(resp.next_page_token), key="index"))

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
