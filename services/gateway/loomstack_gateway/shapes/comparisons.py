"""Comparison protos → the comparison objects of our API (a comparison, its items, votes)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from loomstack.training.v1 import training_pb2

from .common import seconds

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
        "started_at": seconds(c, "start_time"),
        "finished_at": seconds(c, "finish_time"),
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
