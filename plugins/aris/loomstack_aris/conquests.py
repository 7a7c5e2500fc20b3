"""The Aristotle store: conquests and their analysis ratings, every read scoped by project.

Plain typed domain code (no gRPC): the servicer, the result handlers, the victory sync and the
exporters all go through it, and it is the one module that queries the plugin's tables. A
conquest of another project is NotFound exactly like an unknown one. `project=None` is an
admin caller, who sees every project; what an admin creates is recorded under the kit's
`ADMIN_PROJECT`.

Every write is one transaction, so a failure (the database gone mid-handler) leaves nothing
half-written and the handler's retry starts from the same state.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import InvalidArgument, NotFound
from loomstack_kit.identity import owner_project
from loomstack_kit.request_text import stored_text

from .tables import conquests, ratings
from .terms import ConquestResult, ConquestStatus, ConquestType, parse

ID_PREFIX = "conq_"
# `conq_` + 14 hex digits of microseconds (strictly increasing in a process) + 10 random: ids
# sort by creation, so a page token is simply the last id of the previous page.
_ID = re.compile(r"^conq_[0-9a-f]{24}$")
_last_micros = 0
_id_lock = threading.Lock()
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_TEXT = 512
MAX_LONG_TEXT = 64 * 1024
MAX_RATING = 5
API_TASK = 0  # the `ls_task_id` of a rating given through the API (no Label Studio task)


def new_conquest_id() -> str:
    """A new conquest id, `conq_<24 hex>`, ordered by creation time."""
    global _last_micros
    with _id_lock:
        _last_micros = max(time.time_ns() // 1000, _last_micros + 1)
        micros = _last_micros
    return f"{ID_PREFIX}{micros:014x}{secrets.token_hex(5)}"


def text(value: str, param: str, max_length: int = MAX_TEXT) -> str:
    """A text value a database can store and compare; InvalidArgument naming `param`."""
    return stored_text(value, param, max_length)


def conquest_id(value: str, param: str = "conquest_id") -> str:
    """A well-formed conquest id; a malformed one is NotFound naming it (it names nothing)."""
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{param} is required", param=param)
    if not _ID.match(value):
        raise NotFound(f"no conquest {text(value, param)!r}", param=param)
    return value


def page_size(value: int) -> int:
    """0 = the default; larger than the most = the most; negative = refused."""
    if value < 0:
        raise InvalidArgument("page_size must not be negative", param="page_size")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


# ---- what the store returns and takes ---------------------------------------------------------


@dataclass(frozen=True)
class Conquest:
    """One conquest as the domain sees it (prompts and responses decoded)."""

    id: str
    project: str
    type: ConquestType
    title: str
    description: str
    status: ConquestStatus
    result: ConquestResult
    result_notes: str
    use_as_example: bool
    evaluated_by: str
    evaluated_at: float | None
    created_at: float
    updated_at: float
    started_at: float | None
    completed_at: float | None
    philosopher: str
    domain: str
    # [{"custom_id", "messages"}] of the batch's requests, [{"custom_id", "content", "error"}]
    # of its results (record_analysis writes both).
    prompts: list[dict[str, Any]]
    responses: list[dict[str, Any]]
    batch_id: str | None
    gold_sync_pending: bool
    problem: str


@dataclass(frozen=True)
class Rating:
    """A person's rating of a conquest's analysis (from Label Studio or the API)."""

    id: int
    conquest_id: str
    analysis_type: str
    rating: int | None
    feedback: str
    is_gold_star: bool
    use_as_sample_response: bool
    include_in_training: bool
    philosopher: str
    domain: str
    ls_task_id: int
    ls_annotation_id: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class NewConquest:
    """What a caller gives to create a conquest (`type` by name, any case)."""

    type: str
    title: str = ""
    description: str = ""
    philosopher: str = ""
    domain: str = ""
    status: str = ConquestStatus.DRAFT.value
    use_as_example: bool = False


@dataclass(frozen=True)
class ConquestFilter:
    """Which conquests a list returns (None or empty: any)."""

    type: ConquestType | None = None
    status: ConquestStatus | None = None
    result: ConquestResult | None = None
    philosopher: str = ""
    domain: str = ""


@dataclass(frozen=True)
class ConquestPage:
    """One page of a list, newest first; `next_page_token` is empty on the last page."""

    conquests: list[Conquest]
    next_page_token: str


@dataclass(frozen=True)
class Annotation:
    """A rating given through the API (`ls_task_id` 0: tied to no Label Studio task)."""

    rating: int | None = None
    feedback: str = ""
    analysis_type: str = ""
    is_gold_star: bool = False
    use_as_sample_response: bool = False
    include_in_training: bool = True
    ls_task_id: int = API_TASK
    ls_annotation_id: int | None = None


@dataclass(frozen=True)
class Health:
    """Whether the database answers, and what it holds (for the caller's project)."""

    database_reachable: bool
    conquests: int = 0
    victories: int = 0
    pending_gold_syncs: int = 0
    ratings: int = 0
    error: str = ""


ExamplePurpose = Literal["training", "icl"]


@dataclass(frozen=True)
class ExampleFilter:
    """Which VICTORY conquests become examples (empty: any)."""

    type: ConquestType | None = None
    philosopher: str = ""
    domain: str = ""
    limit: int = 0  # 0: no limit


# ---- rows → domain objects --------------------------------------------------------------------


def _conquest(row: Any) -> Conquest:
    return Conquest(
        id=row.id,
        project=row.project,
        type=ConquestType(row.type),
        title=row.title,
        description=row.description,
        status=ConquestStatus(row.status),
        result=ConquestResult(row.result),
        result_notes=row.result_notes,
        use_as_example=bool(row.use_as_example),
        evaluated_by=row.evaluated_by,
        evaluated_at=row.evaluated_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        philosopher=row.philosopher,
        domain=row.domain,
        prompts=json.loads(row.prompt_json or "[]"),
        responses=json.loads(row.response_json or "[]"),
        batch_id=row.batch_id,
        gold_sync_pending=bool(row.gold_sync_pending),
        problem=row.problem,
    )


def _rating(row: Any) -> Rating:
    return Rating(
        id=int(row.id),
        conquest_id=row.conquest_id,
        analysis_type=row.analysis_type,
        rating=row.rating,
        feedback=row.feedback,
        is_gold_star=bool(row.is_gold_star),
        use_as_sample_response=bool(row.use_as_sample_response),
        include_in_training=bool(row.include_in_training),
        philosopher=row.philosopher,
        domain=row.domain,
        ls_task_id=int(row.ls_task_id),
        ls_annotation_id=row.ls_annotation_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _scoped(query: Any, project: str | None) -> Any:
    return query if project is None else query.where(conquests.c.project == project)


class ConquestStore:
    """Conquests and ratings on the plugin's migrated database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- conquests ----------------------------------------------------------------------------

    def create(self, project: str | None, new: NewConquest) -> Conquest:
        """A new conquest (DRAFT unless DOWNLOADING_INFO is asked for; result PENDING)."""
        kind = parse(ConquestType, new.type, "type")
        status = parse(ConquestStatus, new.status or ConquestStatus.DRAFT.value, "status")
        if status not in (ConquestStatus.DRAFT, ConquestStatus.DOWNLOADING_INFO):
            raise InvalidArgument(
                f"status {status.value!r}: a new conquest is DRAFT or DOWNLOADING_INFO",
                param="status",
            )
        now = time.time()
        new_id = new_conquest_id()
        values = {
            "id": new_id,
            "project": owner_project(project),
            "type": kind.value,
            "title": text(new.title, "title"),
            "description": text(new.description, "description", MAX_LONG_TEXT),
            "status": status.value,
            "result": ConquestResult.PENDING.value,
            "result_notes": "",
            "use_as_example": new.use_as_example,
            "evaluated_by": "",
            "created_at": now,
            "updated_at": now,
            "philosopher": text(new.philosopher, "philosopher"),
            "domain": text(new.domain, "domain"),
            "prompt_json": "[]",
            "response_json": "[]",
            "gold_sync_pending": False,
            "problem": "",
        }
        with write_transaction(self.engine) as conn:
            conn.execute(conquests.insert().values(**values))
            return self._get(conn, None, new_id)

    def get(self, project: str | None, conquest_id_: str) -> Conquest:
        """One conquest; NotFound naming the id for an unknown one or another project's."""
        cid = conquest_id(conquest_id_)
        with self.engine.connect() as conn:
            return self._get(conn, project, cid)

    def find(self, project: str, conquest_id_: str) -> Conquest | None:
        """The project's conquest, or None (for handlers: a bad id is not an error there)."""
        if not _ID.match(conquest_id_.strip()):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                _scoped(conquests.select(), project).where(conquests.c.id == conquest_id_.strip())
            ).first()
        return _conquest(row) if row is not None else None

    def by_batch(self, project: str, batch_id: str) -> list[Conquest]:
        """The project's conquests analysed by a batch (usually one)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                _scoped(conquests.select(), project)
                .where(conquests.c.batch_id == batch_id)
                .order_by(conquests.c.id)
            ).all()
        return [_conquest(r) for r in rows]

    def list_conquests(
        self,
        project: str | None,
        flt: ConquestFilter = ConquestFilter(),
        size: int = 0,
        page_token: str = "",
    ) -> ConquestPage:
        """A page of conquests, newest first; `page_token` is the last id of the page before."""
        limit = page_size(size)
        query = _scoped(conquests.select(), project)
        if page_token:
            if not _ID.match(page_token):
                raise InvalidArgument("invalid page_token", param="page_token")
            query = query.where(conquests.c.id < page_token)
        if flt.type is not None:
            query = query.where(conquests.c.type == flt.type.value)
        if flt.status is not None:
            query = query.where(conquests.c.status == flt.status.value)
        if flt.result is not None:
            query = query.where(conquests.c.result == flt.result.value)
        if flt.philosopher:
            query = query.where(conquests.c.philosopher == text(flt.philosopher, "philosopher"))
        if flt.domain:
            query = query.where(conquests.c.domain == text(flt.domain, "domain"))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(conquests.c.id.desc()).limit(limit + 1)).all()
        page = [_conquest(r) for r in rows[:limit]]
        return ConquestPage(page, page[-1].id if len(rows) > limit else "")

    def set_result(
        self,
        project: str | None,
        conquest_id_: str,
        result: str,
        *,
        notes: str = "",
        evaluated_by: str = "",
        use_as_example: bool | None = None,
    ) -> Conquest:
        """A person's verdict. VICTORY marks the gold star sync pending (victories.py carries it
        to Label Studio); any other result clears a pending one."""
        cid = conquest_id(conquest_id_)
        verdict = parse(ConquestResult, result, "result")
        values: dict[str, Any] = {
            "result": verdict.value,
            "result_notes": text(notes, "result_notes", MAX_LONG_TEXT),
            "evaluated_by": text(evaluated_by or "api", "evaluated_by"),
            "evaluated_at": time.time(),
            "updated_at": time.time(),
            "gold_sync_pending": verdict is ConquestResult.VICTORY,
        }
        if use_as_example is not None:
            values["use_as_example"] = use_as_example
        with write_transaction(self.engine) as conn:
            self._get(conn, project, cid)
            conn.execute(conquests.update().where(conquests.c.id == cid).values(**values))
            return self._get(conn, None, cid)

    def clear_gold_sync(self, conquest_id_: str) -> None:
        """The batch's tasks carry the gold star now (only while the result is still VICTORY:
        a verdict changed meanwhile stays as it is)."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                conquests.update()
                .where(conquests.c.id == conquest_id_)
                .where(conquests.c.result == ConquestResult.VICTORY.value)
                .values(gold_sync_pending=False)
            )

    def pending_gold_syncs(self, project: str | None) -> list[Conquest]:
        """The conquests whose VICTORY has not reached Label Studio yet, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                _scoped(conquests.select(), project)
                .where(conquests.c.gold_sync_pending == sa.true())
                .order_by(conquests.c.id)
            ).all()
        return [_conquest(r) for r in rows]

    # ---- what the result handlers record ------------------------------------------------------

    def record_problem(self, project: str, conquest_id_: str, problem: str) -> None:
        """The last thing a handler could not make sense of, on the conquest."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                _update(project, conquest_id_).values(
                    problem=problem[:MAX_LONG_TEXT], updated_at=time.time()
                )
            )

    def attach_batch(
        self, project: str, conquest_id_: str, batch_id: str, *, started: bool
    ) -> None:
        """The conquest's batch; `started` (batch.created) moves an unfinished conquest to
        ANALYZING. Clears an earlier problem: the metadata made sense this time."""
        with write_transaction(self.engine) as conn:
            row = self._get(conn, project, conquest_id_)
            values: dict[str, Any] = {
                "batch_id": batch_id,
                "problem": "",
                "updated_at": time.time(),
            }
            if started and not row.status.finished:
                values["status"] = ConquestStatus.ANALYZING.value
                values["started_at"] = row.started_at or time.time()
            conn.execute(_update(project, conquest_id_).values(**values))

    def record_analysis(
        self,
        project: str,
        conquest_id_: str,
        batch_id: str,
        prompts: Sequence[dict[str, Any]],
        responses: Sequence[dict[str, Any]],
        *,
        failed: bool,
    ) -> Conquest:
        """The batch's prompts and answers; COMPLETED (FAILED when nothing succeeded). A
        CANCELLED conquest keeps its status."""
        with write_transaction(self.engine) as conn:
            row = self._get(conn, project, conquest_id_)
            now = time.time()
            values: dict[str, Any] = {
                "batch_id": batch_id,
                "prompt_json": json.dumps(list(prompts), ensure_ascii=False),
                "response_json": json.dumps(list(responses), ensure_ascii=False),
                "updated_at": now,
                "started_at": row.started_at or now,
                "completed_at": row.completed_at or now,
            }
            if row.status is not ConquestStatus.CANCELLED:
                values["status"] = (
                    ConquestStatus.FAILED if failed else ConquestStatus.COMPLETED
                ).value
            conn.execute(_update(project, conquest_id_).values(**values))
            return self._get(conn, None, conquest_id_)

    def end_early(
        self, project: str, conquest_id_: str, batch_id: str, status: ConquestStatus, problem: str
    ) -> Conquest:
        """The conquest's batch ended without completing (cancelled: CANCELLED; expired:
        FAILED), with the reason. A conquest already finished keeps its status."""
        with write_transaction(self.engine) as conn:
            row = self._get(conn, project, conquest_id_)
            now = time.time()
            values: dict[str, Any] = {"batch_id": batch_id, "updated_at": now}
            if not row.status.finished:
                values.update(
                    status=status.value, problem=problem, completed_at=row.completed_at or now
                )
            conn.execute(_update(project, conquest_id_).values(**values))
            return self._get(conn, None, conquest_id_)

    def record_gold(
        self,
        project: str,
        batch_id: str,
        ls_task_id: int,
        ls_annotation_id: int | None,
        gold: bool,
        origin: str,
        at: float,
    ) -> list[Conquest]:
        """A gold star given (VICTORY, and the task's rating row starred) or taken (the row
        unstarred; the result stays) in Label Studio, on the batch's conquests. One row per
        (task, conquest) however often it is delivered; an existing VICTORY keeps who
        evaluated it."""
        with write_transaction(self.engine) as conn:
            rows = conn.execute(
                _scoped(conquests.select(), project).where(conquests.c.batch_id == batch_id)
            ).all()
            found = [_conquest(r) for r in rows]
            for conquest in found:
                if gold and conquest.result is not ConquestResult.VICTORY:
                    conn.execute(
                        conquests.update()
                        .where(conquests.c.id == conquest.id)
                        .values(
                            result=ConquestResult.VICTORY.value,
                            evaluated_by=text(origin or "label_studio", "origin"),
                            evaluated_at=at or time.time(),
                            updated_at=time.time(),
                        )
                    )
                _upsert_rating(
                    conn,
                    conquest,
                    {"is_gold_star": gold, "ls_annotation_id": ls_annotation_id},
                    ls_task_id,
                    insert_only={"analysis_type": conquest.type.value},
                )
            return [self._get(conn, None, c.id) for c in found]

    # ---- ratings ------------------------------------------------------------------------------

    def annotate(self, project: str | None, conquest_id_: str, annotation: Annotation) -> Rating:
        """Writes (or updates) the conquest's rating for `annotation.ls_task_id`."""
        cid = conquest_id(conquest_id_)
        if annotation.rating is not None and not 1 <= annotation.rating <= MAX_RATING:
            raise InvalidArgument(
                f"rating must be 1 to {MAX_RATING}, not {annotation.rating}", param="rating"
            )
        if annotation.ls_task_id < 0:
            raise InvalidArgument("ls_task_id must not be negative", param="ls_task_id")
        values = {
            "rating": annotation.rating,
            "feedback": text(annotation.feedback, "feedback", MAX_LONG_TEXT),
            "analysis_type": text(annotation.analysis_type, "analysis_type", 64),
            "is_gold_star": annotation.is_gold_star,
            "use_as_sample_response": annotation.use_as_sample_response,
            "include_in_training": annotation.include_in_training,
            "ls_annotation_id": annotation.ls_annotation_id,
        }
        with write_transaction(self.engine) as conn:
            conquest = self._get(conn, project, cid)
            if not values["analysis_type"]:
                values["analysis_type"] = conquest.type.value
            _upsert_rating(conn, conquest, values, annotation.ls_task_id)
            row = conn.execute(
                ratings.select()
                .where(ratings.c.conquest_id == cid)
                .where(ratings.c.ls_task_id == annotation.ls_task_id)
            ).one()
            return _rating(row)

    def ratings_of(self, project: str | None, conquest_id_: str) -> list[Rating]:
        """A conquest's ratings, by Label Studio task."""
        cid = conquest_id(conquest_id_)
        with self.engine.connect() as conn:
            self._get(conn, project, cid)
            rows = conn.execute(
                ratings.select().where(ratings.c.conquest_id == cid).order_by(ratings.c.ls_task_id)
            ).all()
        return [_rating(r) for r in rows]

    # ---- examples and health ------------------------------------------------------------------

    def victories(
        self, project: str | None, flt: ExampleFilter, purpose: ExamplePurpose
    ) -> list[Conquest]:
        """VICTORY conquests with a recorded answer that may serve as examples.

        training: every one unless a rating opts it out (`include_in_training` false), oldest
        first. icl: only the hand-picked ones (`use_as_example`, or a rating with
        `use_as_sample_response`), newest first.
        """
        query = _scoped(conquests.select(), project).where(
            conquests.c.result == ConquestResult.VICTORY.value,
            conquests.c.response_json != "[]",
        )
        of_conquest = ratings.c.conquest_id == conquests.c.id
        if purpose == "training":
            opted_out = sa.exists().where(of_conquest, ratings.c.include_in_training == sa.false())
            query = query.where(~opted_out).order_by(conquests.c.id)
        else:
            sample = sa.exists().where(of_conquest, ratings.c.use_as_sample_response == sa.true())
            query = query.where(sa.or_(conquests.c.use_as_example == sa.true(), sample)).order_by(
                conquests.c.id.desc()
            )
        if flt.type is not None:
            query = query.where(conquests.c.type == flt.type.value)
        if flt.philosopher:
            query = query.where(conquests.c.philosopher == text(flt.philosopher, "user_email"))
        if flt.domain:
            query = query.where(conquests.c.domain == text(flt.domain, "domain"))
        if flt.limit:
            query = query.limit(flt.limit)
        with self.engine.connect() as conn:
            return [_conquest(r) for r in conn.execute(query).all()]

    def health(self, project: str | None) -> Health:
        """Counts of the caller's project; `database_reachable` false (with the error's class)
        when the database does not answer."""
        try:
            with self.engine.connect() as conn:

                def count(query: Any) -> int:
                    return int(conn.execute(query).scalar_one())

                base = _scoped(sa.select(sa.func.count()).select_from(conquests), project)
                rated = sa.select(sa.func.count()).select_from(
                    ratings.join(conquests, ratings.c.conquest_id == conquests.c.id)
                )
                return Health(
                    database_reachable=True,
                    conquests=count(base),
                    victories=count(base.where(conquests.c.result == ConquestResult.VICTORY.value)),
                    pending_gold_syncs=count(
                        base.where(conquests.c.gold_sync_pending == sa.true())
                    ),
                    ratings=count(_scoped(rated, project)),
                )
        except SQLAlchemyError as exc:
            return Health(database_reachable=False, error=type(exc).__name__)

    # ---- internals ----------------------------------------------------------------------------

    def _get(self, conn: sa.Connection, project: str | None, cid: str) -> Conquest:
        row = conn.execute(
            _scoped(conquests.select(), project).where(conquests.c.id == cid)
        ).first()
        if row is None:
            raise NotFound(f"no conquest {cid!r}", param="conquest_id")
        return _conquest(row)


def _update(project: str, cid: str) -> Any:
    return conquests.update().where(conquests.c.id == cid, conquests.c.project == project)


def _upsert_rating(
    conn: sa.Connection,
    conquest: Conquest,
    values: dict[str, Any],
    ls_task_id: int,
    insert_only: dict[str, Any] | None = None,
) -> None:
    """Inserts the (task, conquest) rating row, or updates `values` of the one there: one
    statement, so two deliveries at once still make one row."""
    now = time.time()
    row = {
        "conquest_id": conquest.id,
        "ls_task_id": ls_task_id,
        "philosopher": conquest.philosopher,
        "domain": conquest.domain,
        "created_at": now,
        "updated_at": now,
        **(insert_only or {}),
        **values,
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(ratings).values(**row)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[ratings.c.ls_task_id, ratings.c.conquest_id],
            set_={**values, "updated_at": now},
        )
    )
