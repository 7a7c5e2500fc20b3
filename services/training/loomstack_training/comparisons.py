"""A/B comparisons in the database: the state machine, the items and the votes.

`queued → running → completed | failed`. A comparison stores its prompts as items when it is
created; the runner fills in both models' answers and the scores in one transaction when it
completes. Every transition is a conditional update on the current status. A graceful stop
re-queues the comparison it was running; one a crashed service left `running` is re-queued when
the service starts again, and failed once crashes interrupted it `max_attempts` times, so none
stays `running` forever.

Votes are accepted on completed comparisons only. The win rate is model B's over model A:
votes for B / (votes for A + votes for B), ties left out; it is undefined (None) until a vote
preferred either model. A named voter's new vote on an item replaces their earlier one, so a
tally counts each person once per item; anonymous votes all count.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import FailedPrecondition, InvalidArgument, NotFound

from .batch_answers import Answer, Messages
from .comparison_file import ComparisonPrompt
from .scoring import Scores, exact_match, score, token_overlap
from .tables import comparison_items, comparison_votes, comparisons

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
TERMINAL = frozenset({COMPLETED, FAILED})
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, FAILED}),
    RUNNING: frozenset({QUEUED, COMPLETED, FAILED}),
}
WINNERS = ("a", "b", "tie")
MAX_VOTER = 128
MAX_COMMENT = 4000


@dataclass(frozen=True)
class VoteCounts:
    """Votes for model A, model B and ties."""

    a: int = 0
    b: int = 0
    tie: int = 0

    @property
    def win_rate(self) -> float | None:
        """Model B's win rate over model A (ties left out); None without a decisive vote."""
        decisive = self.a + self.b
        return self.b / decisive if decisive else None


@dataclass(frozen=True)
class ComparisonView:
    """A comparison as callers see it."""

    id: str
    project: str
    model_a: str
    model_b: str
    input_file_id: str
    max_tokens: int
    metadata: dict[str, str]
    status: str
    item_count: int
    scored_item_count: int
    scores_a: Scores | None
    scores_b: Scores | None
    votes: VoteCounts
    error: dict[str, str] | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class ItemView:
    """One prompt of a comparison, both answers, their scores and the item's votes."""

    index: int
    line: int
    messages: Messages
    reference: str | None
    answer_a: str
    answer_b: str
    error_a: str
    error_b: str
    scores_a: Scores | None
    scores_b: Scores | None
    votes: VoteCounts = field(default_factory=VoteCounts)


@dataclass(frozen=True)
class VoteView:
    """A recorded vote."""

    id: str
    comparison_id: str
    index: int
    winner: str
    voter: str
    comment: str
    created_at: float


def _scores(exact: float | None, overlap: float | None) -> Scores | None:
    return None if exact is None or overlap is None else Scores(exact, overlap)


def _counts(rows: Iterable[Any]) -> VoteCounts:
    counts = {row.winner: int(row.n) for row in rows}
    return VoteCounts(counts.get("a", 0), counts.get("b", 0), counts.get("tie", 0))


def _view(row: Any, votes: VoteCounts) -> ComparisonView:
    return ComparisonView(
        id=row.id,
        project=row.project,
        model_a=row.model_a,
        model_b=row.model_b,
        input_file_id=row.input_file_id,
        max_tokens=row.max_tokens,
        metadata=orjson.loads(row.metadata_json),
        status=row.status,
        item_count=row.item_count,
        scored_item_count=row.scored_item_count,
        scores_a=_scores(row.exact_match_a, row.token_overlap_a),
        scores_b=_scores(row.exact_match_b, row.token_overlap_b),
        votes=votes,
        error=orjson.loads(row.error_json) if row.error_json else None,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _item(row: Any, votes: VoteCounts) -> ItemView:
    return ItemView(
        index=row.item_index,
        line=row.line,
        messages=orjson.loads(row.messages_json),
        reference=row.reference,
        answer_a=row.answer_a or "",
        answer_b=row.answer_b or "",
        error_a=row.error_a or "",
        error_b=row.error_b or "",
        scores_a=_scores(row.exact_match_a, row.token_overlap_a),
        scores_b=_scores(row.exact_match_b, row.token_overlap_b),
        votes=votes,
    )


class Comparisons:
    """Comparisons, their items and votes in the training database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- creation and reads -------------------------------------------------------------

    def create(
        self,
        *,
        project: str,
        model_a: str,
        model_b: str,
        input_file_id: str,
        max_tokens: int,
        metadata: dict[str, str],
        prompts: list[ComparisonPrompt],
    ) -> ComparisonView:
        """A new `queued` comparison with one item per prompt."""
        comparison_id = f"cmp-{secrets.token_hex(12)}"
        with write_transaction(self.engine) as conn:
            conn.execute(
                comparisons.insert().values(
                    id=comparison_id,
                    project=project,
                    model_a=model_a,
                    model_b=model_b,
                    input_file_id=input_file_id,
                    max_tokens=max_tokens,
                    metadata_json=orjson.dumps(metadata).decode(),
                    status=QUEUED,
                    item_count=len(prompts),
                    scored_item_count=sum(p.reference is not None for p in prompts),
                    created_at=time.time(),
                )
            )
            conn.execute(
                comparison_items.insert(),
                [
                    {
                        "comparison_id": comparison_id,
                        "item_index": index,
                        "line": p.line,
                        "messages_json": orjson.dumps(p.messages).decode(),
                        "reference": p.reference,
                    }
                    for index, p in enumerate(prompts)
                ],
            )
        return self.get(None, comparison_id)

    def _row(self, conn: sa.Connection, project: str | None, comparison_id: str) -> Any:
        query = sa.select(comparisons).where(comparisons.c.id == comparison_id)
        if project is not None:
            query = query.where(comparisons.c.project == project)
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no comparison {comparison_id!r}", param="comparison_id")
        return row

    @staticmethod
    def _tally(conn: sa.Connection, comparison_id: str) -> VoteCounts:
        return _counts(
            conn.execute(
                sa.select(comparison_votes.c.winner, sa.func.count().label("n"))
                .where(comparison_votes.c.comparison_id == comparison_id)
                .group_by(comparison_votes.c.winner)
            )
        )

    def get(self, project: str | None, comparison_id: str) -> ComparisonView:
        """One comparison of the project (None = any project) with its votes, or NotFound."""
        with self.engine.connect() as conn:
            row = self._row(conn, project, comparison_id)
            return _view(row, self._tally(conn, comparison_id))

    def list_comparisons(
        self, project: str | None, limit: int = 20, after: str = ""
    ) -> tuple[list[ComparisonView], bool]:
        """A page of comparisons, newest first, and whether more follow."""
        query = sa.select(comparisons).order_by(
            comparisons.c.created_at.desc(), comparisons.c.id.desc()
        )
        if project is not None:
            query = query.where(comparisons.c.project == project)
        with self.engine.connect() as conn:
            if after:
                anchor = self._row(conn, project, after)
                query = query.where(
                    sa.or_(
                        comparisons.c.created_at < anchor.created_at,
                        sa.and_(
                            comparisons.c.created_at == anchor.created_at,
                            comparisons.c.id < anchor.id,
                        ),
                    )
                )
            rows = conn.execute(query.limit(limit + 1)).all()
            tallies: dict[str, list[Any]] = {}
            if rows:
                for vote in conn.execute(
                    sa.select(
                        comparison_votes.c.comparison_id,
                        comparison_votes.c.winner,
                        sa.func.count().label("n"),
                    )
                    .where(comparison_votes.c.comparison_id.in_([r.id for r in rows[:limit]]))
                    .group_by(comparison_votes.c.comparison_id, comparison_votes.c.winner)
                ):
                    tallies.setdefault(vote.comparison_id, []).append(vote)
        page = [_view(r, _counts(tallies.get(r.id, []))) for r in rows[:limit]]
        return page, len(rows) > limit

    def items(
        self, project: str | None, comparison_id: str, limit: int = 20, after: int = -1
    ) -> tuple[list[ItemView], bool]:
        """A page of items in index order (`after` = the last index seen), and whether more
        follow."""
        with self.engine.connect() as conn:
            self._row(conn, project, comparison_id)
            rows = conn.execute(
                sa.select(comparison_items)
                .where(
                    comparison_items.c.comparison_id == comparison_id,
                    comparison_items.c.item_index > after,
                )
                .order_by(comparison_items.c.item_index)
                .limit(limit + 1)
            ).all()
            page = rows[:limit]
            tallies: dict[int, list[Any]] = {}
            if page:
                for vote in conn.execute(
                    sa.select(
                        comparison_votes.c.item_index,
                        comparison_votes.c.winner,
                        sa.func.count().label("n"),
                    )
                    .where(
                        comparison_votes.c.comparison_id == comparison_id,
                        comparison_votes.c.item_index.in_([r.item_index for r in page]),
                    )
                    .group_by(comparison_votes.c.item_index, comparison_votes.c.winner)
                ):
                    tallies.setdefault(vote.item_index, []).append(vote)
        return [_item(r, _counts(tallies.get(r.item_index, []))) for r in page], len(rows) > limit

    def prompts(self, comparison_id: str) -> list[Messages]:
        """The prompts to answer, in index order (the runner's input)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(comparison_items.c.messages_json)
                .where(comparison_items.c.comparison_id == comparison_id)
                .order_by(comparison_items.c.item_index)
            ).all()
        return [orjson.loads(r.messages_json) for r in rows]

    # --- transitions --------------------------------------------------------------------

    def _move(self, conn: sa.Connection, comparison_id: str, to: str, **values: Any) -> bool:
        allowed_from = [s for s, targets in TRANSITIONS.items() if to in targets]
        if to in TERMINAL:
            values.setdefault("finished_at", time.time())
        updated = conn.execute(
            comparisons.update()
            .where(comparisons.c.id == comparison_id, comparisons.c.status.in_(allowed_from))
            .values(status=to, **values)
        ).rowcount
        return bool(updated)

    def claim_next(self) -> ComparisonView | None:
        """The oldest queued comparison, now `running` (one more attempt), or None."""
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                sa.select(comparisons.c.id)
                .where(comparisons.c.status == QUEUED)
                .order_by(comparisons.c.created_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            if not self._move(
                conn,
                row.id,
                RUNNING,
                started_at=time.time(),
                attempts=comparisons.c.attempts + 1,
            ):
                return None
        return self.get(None, row.id)

    def complete(
        self, comparison_id: str, answers_a: list[Answer], answers_b: list[Answer]
    ) -> bool:
        """Stores both models' answers (in index order) and their scores against the
        references, and moves to `completed`; False when the comparison was not running."""
        with write_transaction(self.engine) as conn:
            references = [
                r.reference
                for r in conn.execute(
                    sa.select(comparison_items.c.reference)
                    .where(comparison_items.c.comparison_id == comparison_id)
                    .order_by(comparison_items.c.item_index)
                )
            ]
            if not (len(references) == len(answers_a) == len(answers_b)):
                raise ValueError(
                    f"{len(references)} items but {len(answers_a)}/{len(answers_b)} answers"
                )
            scored = [i for i, r in enumerate(references) if r is not None]
            totals: dict[str, float | None] = dict.fromkeys(
                ("exact_match_a", "token_overlap_a", "exact_match_b", "token_overlap_b")
            )
            if scored:
                refs = [str(references[i]) for i in scored]
                a_scores = score([answers_a[i].text for i in scored], refs)
                b_scores = score([answers_b[i].text for i in scored], refs)
                totals = {
                    "exact_match_a": a_scores.exact_match,
                    "token_overlap_a": a_scores.token_overlap,
                    "exact_match_b": b_scores.exact_match,
                    "token_overlap_b": b_scores.token_overlap,
                }
            moved = self._move(conn, comparison_id, COMPLETED, **totals)
            if not moved:  # failed meanwhile: its items stay unanswered
                return False
            for index, (reference, a, b) in enumerate(
                zip(references, answers_a, answers_b, strict=True)
            ):
                values: dict[str, Any] = {
                    "answer_a": a.text,
                    "answer_b": b.text,
                    "error_a": a.error or None,
                    "error_b": b.error or None,
                }
                if reference is not None:
                    values.update(
                        exact_match_a=exact_match(a.text, reference),
                        token_overlap_a=token_overlap(a.text, reference),
                        exact_match_b=exact_match(b.text, reference),
                        token_overlap_b=token_overlap(b.text, reference),
                    )
                conn.execute(
                    comparison_items.update()
                    .where(
                        comparison_items.c.comparison_id == comparison_id,
                        comparison_items.c.item_index == index,
                    )
                    .values(**values)
                )
        return True

    def fail(self, comparison_id: str, code: str, message: str) -> bool:
        """To `failed` with the reason; False when the comparison was already final."""
        error = orjson.dumps({"code": code, "message": message}).decode()
        with write_transaction(self.engine) as conn:
            return self._move(conn, comparison_id, FAILED, error_json=error)

    def requeue(self, comparison_id: str, *, interrupted: bool = True) -> bool:
        """A running comparison back to `queued`. `interrupted=False` (a graceful stop that
        cancelled its batches) gives the attempt back: only crashes count towards the limit."""
        values: dict[str, Any] = {} if interrupted else {"attempts": comparisons.c.attempts - 1}
        with write_transaction(self.engine) as conn:
            return self._move(conn, comparison_id, QUEUED, **values)

    def reconcile(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """At start: what an earlier process left `running` is re-queued, or failed once it
        has been started `max_attempts` times. Returns (re-queued ids, failed ids)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(comparisons.c.id, comparisons.c.attempts).where(
                    comparisons.c.status == RUNNING
                )
            ).all()
        requeued, failed = [], []
        for row in rows:
            if row.attempts < max_attempts:
                if self.requeue(row.id):
                    requeued.append(row.id)
            elif self.fail(
                row.id,
                "service_restarted",
                f"the training service stopped while the comparison was running "
                f"({row.attempts} times); create it again",
            ):
                failed.append(row.id)
        return requeued, failed

    # --- votes --------------------------------------------------------------------------

    def vote(
        self,
        project: str | None,
        comparison_id: str,
        index: int,
        *,
        winner: str,
        voter: str = "",
        comment: str = "",
    ) -> VoteView:
        """Records a vote on a completed comparison's item (a named voter's replaces theirs)."""
        if winner not in WINNERS:
            raise InvalidArgument(
                f"winner is {winner!r}: use one of {', '.join(WINNERS)}", param="winner"
            )
        if len(voter) > MAX_VOTER:
            raise InvalidArgument(f"voter is longer than {MAX_VOTER} characters", param="voter")
        if len(comment) > MAX_COMMENT:
            raise InvalidArgument(
                f"comment is longer than {MAX_COMMENT} characters", param="comment"
            )
        vote = VoteView(
            id=f"vote-{secrets.token_hex(12)}",
            comparison_id=comparison_id,
            index=index,
            winner=winner,
            voter=voter,
            comment=comment,
            created_at=time.time(),
        )
        with write_transaction(self.engine) as conn:
            row = self._row(conn, project, comparison_id)
            if row.status != COMPLETED:
                raise FailedPrecondition(
                    f"comparison {comparison_id} is {row.status}: votes are accepted once it "
                    "is completed",
                    code="comparison_not_completed",
                    param="comparison_id",
                )
            if not 0 <= index < row.item_count:
                raise NotFound(
                    f"comparison {comparison_id} has no item {index} (items are 0 to "
                    f"{row.item_count - 1})",
                    param="index",
                )
            if voter:
                conn.execute(
                    comparison_votes.delete().where(
                        comparison_votes.c.comparison_id == comparison_id,
                        comparison_votes.c.item_index == index,
                        comparison_votes.c.voter == voter,
                    )
                )
            conn.execute(
                comparison_votes.insert().values(
                    id=vote.id,
                    comparison_id=comparison_id,
                    item_index=index,
                    winner=winner,
                    voter=voter,
                    comment=comment,
                    created_at=vote.created_at,
                )
            )
        return vote
