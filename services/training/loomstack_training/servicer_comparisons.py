"""gRPC servicer of comparisons: converts protos to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from loomstack.training.v1 import training_pb2, training_pb2_grpc
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.identity import owner_project, project_of

from .comparison_runner import ComparisonRunner
from .comparisons import Comparisons, ComparisonView, ItemView, VoteCounts, VoteView
from .scoring import Scores
from .servicer import _ts

_STATUS = {
    "queued": training_pb2.COMPARISON_STATUS_QUEUED,
    "running": training_pb2.COMPARISON_STATUS_RUNNING,
    "completed": training_pb2.COMPARISON_STATUS_COMPLETED,
    "failed": training_pb2.COMPARISON_STATUS_FAILED,
}
_WINNER = {
    training_pb2.VOTE_WINNER_A: "a",
    training_pb2.VOTE_WINNER_B: "b",
    training_pb2.VOTE_WINNER_TIE: "tie",
}
_WINNER_PROTO = {name: value for value, name in _WINNER.items()}
_DIGITS = re.compile(r"[0-9]+")
MAX_ITEM_INDEX = 2**31 - 1


def _scores(scores: Scores) -> training_pb2.ModelScores:
    return training_pb2.ModelScores(
        exact_match=scores.exact_match, token_overlap=scores.token_overlap
    )


def _votes(votes: VoteCounts) -> training_pb2.VoteCounts:
    return training_pb2.VoteCounts(a=votes.a, b=votes.b, tie=votes.tie)


def comparison_to_proto(c: ComparisonView) -> training_pb2.Comparison:
    """Domain comparison → proto."""
    msg = training_pb2.Comparison(
        id=c.id,
        model_a=c.model_a,
        model_b=c.model_b,
        input_file_id=c.input_file_id,
        max_tokens=c.max_tokens,
        status=_STATUS[c.status],
        item_count=c.item_count,
        scored_item_count=c.scored_item_count,
        votes=_votes(c.votes),
        create_time=_ts(c.created_at),
        project=c.project,
        metadata=c.metadata,
    )
    if c.scores_a is not None:
        msg.scores_a.CopyFrom(_scores(c.scores_a))
    if c.scores_b is not None:
        msg.scores_b.CopyFrom(_scores(c.scores_b))
    if c.votes.win_rate is not None:
        msg.win_rate = c.votes.win_rate
    if c.error:
        msg.error.CopyFrom(training_pb2.ComparisonError(**c.error))
    if c.started_at is not None:
        msg.start_time.CopyFrom(_ts(c.started_at))
    if c.finished_at is not None:
        msg.finish_time.CopyFrom(_ts(c.finished_at))
    return msg


def item_to_proto(item: ItemView) -> training_pb2.ComparisonItem:
    """Domain item → proto."""
    msg = training_pb2.ComparisonItem(
        index=item.index,
        line=item.line,
        messages=[training_pb2.PromptMessage(**m) for m in item.messages],
        answer_a=item.answer_a,
        answer_b=item.answer_b,
        error_a=item.error_a,
        error_b=item.error_b,
        votes=_votes(item.votes),
    )
    if item.reference is not None:
        msg.reference = item.reference
    if item.scores_a is not None:
        msg.scores_a.CopyFrom(_scores(item.scores_a))
    if item.scores_b is not None:
        msg.scores_b.CopyFrom(_scores(item.scores_b))
    return msg


def vote_to_proto(vote: VoteView) -> training_pb2.Vote:
    """Domain vote → proto."""
    return training_pb2.Vote(
        id=vote.id,
        comparison_id=vote.comparison_id,
        index=vote.index,
        winner=_WINNER_PROTO[vote.winner],
        voter=vote.voter,
        comment=vote.comment,
        create_time=_ts(vote.created_at),
    )


def _index_cursor(token: str) -> int:
    # ASCII digits only (`str.isdigit` takes "²", which `int` refuses); the item index column is
    # 32-bit, and a cursor past it is past every item (a larger one would fail the query).
    if not token:
        return -1
    if not _DIGITS.fullmatch(token):
        raise InvalidArgument(f"page_token {token!r} is not an item index", param="page_token")
    # Longer than the column's 10 digits: past it without converting (int() refuses numbers of
    # thousands of digits).
    return MAX_ITEM_INDEX if len(token) > 10 else min(int(token), MAX_ITEM_INDEX)


class ComparisonServicer(training_pb2_grpc.ComparisonServiceServicer):
    """A/B comparisons over gRPC."""

    def __init__(self, comparisons: Comparisons, runner: ComparisonRunner) -> None:
        self.comparisons = comparisons
        self.runner = runner

    async def CreateComparison(
        self, request: training_pb2.CreateComparisonRequest, context: Any
    ) -> training_pb2.Comparison:
        comparison = await asyncio.to_thread(
            self.runner.create,
            owner_project(project_of(context)),
            model_a=request.model_a,
            model_b=request.model_b,
            input_file_id=request.input_file_id,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            metadata=dict(request.metadata),
        )
        return comparison_to_proto(comparison)

    async def GetComparison(
        self, request: training_pb2.GetComparisonRequest, context: Any
    ) -> training_pb2.Comparison:
        comparison = await asyncio.to_thread(
            self.comparisons.get, project_of(context), request.comparison_id
        )
        return comparison_to_proto(comparison)

    async def ListComparisons(
        self, request: training_pb2.ListComparisonsRequest, context: Any
    ) -> training_pb2.ListComparisonsResponse:
        limit = min(request.page_size or 20, 100)
        page, more = await asyncio.to_thread(
            self.comparisons.list_comparisons, project_of(context), limit, request.page_token
        )
        return training_pb2.ListComparisonsResponse(
            comparisons=[comparison_to_proto(c) for c in page],
            next_page_token=page[-1].id if more else "",
        )

    async def ListComparisonItems(
        self, request: training_pb2.ListComparisonItemsRequest, context: Any
    ) -> training_pb2.ListComparisonItemsResponse:
        limit = min(request.page_size or 20, 100)
        page, more = await asyncio.to_thread(
            self.comparisons.items,
            project_of(context),
            request.comparison_id,
            limit,
            _index_cursor(request.page_token),
        )
        return training_pb2.ListComparisonItemsResponse(
            items=[item_to_proto(i) for i in page],
            next_page_token=str(page[-1].index) if more else "",
        )

    async def CreateVote(
        self, request: training_pb2.CreateVoteRequest, context: Any
    ) -> training_pb2.Vote:
        winner = _WINNER.get(request.winner)
        if winner is None:
            raise InvalidArgument("winner is required: a, b or tie", param="winner")
        vote = await asyncio.to_thread(
            self.comparisons.vote,
            project_of(context),
            request.comparison_id,
            int(request.index),
            winner=winner,
            voter=request.voter,
            comment=request.comment,
        )
        return vote_to_proto(vote)
