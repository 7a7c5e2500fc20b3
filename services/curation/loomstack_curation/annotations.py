"""Annotations from Label Studio, recorded per task: gold stars, ratings, corrections, agreement.

Two ways in, same result: the webhook (webhook.py) records one annotation as it happens, and
the reconcile (reconcile.py) replaces a task's whole annotation set with what Label Studio has,
so a missed webhook (or a deleted annotation) loses nothing.

Per task, the latest non-cancelled annotation is the one a training example uses; `gold` is its
gold flag, `rating` its first rating question, `corrected` whether its answers differ from the
prediction, `auto_accepted` whether it is an automatic one (auto_accept.py); `agreement` (two
or more annotations) is the mean, over pairs of annotations, of the share of questions answered
identically.

An annotation's `annotator` is `auto-accept` when the importer made it from the prediction
(`record_automatic`) and empty when it came from Label Studio; an automatic annotation whose
result changes in Label Studio was changed by a person, and is a person's from then on.

Each change is an event of the curation feed (events.py), in the same transaction:
`annotation.created` / `annotation.updated` when an annotation's result (or cancellation) is
new or differs from what is recorded, `task.gold_set` / `task.gold_removed` when a task's
`gold` changes. Their `origin` is the caller's (`label_studio` for the webhook and the
reconcile). Label Studio reports a change made through its API (a gold star given here) by
webhook before its API call returns, so a caller changing tasks there on behalf of someone
names them first (`on_behalf_of`): what Label Studio reports about those tasks meanwhile is
that origin's change.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.plugins import ANNOTATION_CREATED, ANNOTATION_UPDATED, GOLD_REMOVED, GOLD_SET

from . import tables
from .auto_accept import ANNOTATOR as AUTO_ACCEPT_ANNOTATOR
from .catalog import SchemaCatalog
from .events import ORIGIN_AUTO_ACCEPT, ORIGIN_LABEL_STUDIO, CurationEvents
from .examples import read_answers
from .import_states import ANNOTATED, IMPORTED
from .task_schema import RatingQuestion, TaskSchema


@dataclass(frozen=True)
class AnnotationRecord:
    """An annotation as Label Studio reports it."""

    id: int
    task_id: int
    result: list[dict[str, Any]]
    was_cancelled: bool
    updated_at: float

    @cached_property
    def result_json(self) -> str:
        """The result as stored (canonical JSON, to compare with what is recorded)."""
        return json.dumps(self.result, sort_keys=True, ensure_ascii=False)


def _timestamp(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def label_studio_id(value: Any) -> int:
    """A Label Studio id: a positive integer our 64-bit columns hold (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not an id")
    number = int(value)
    if not 0 < number <= 2**63 - 1:
        raise ValueError(f"{value!r} is not an id")
    return number


def annotation_record(raw: Mapping[str, Any], task_id: int | None = None) -> AnnotationRecord:
    """An annotation from a webhook payload, an export or the tasks API."""
    task = raw.get("task")
    if isinstance(task, Mapping):
        task = task.get("id")
    result = raw.get("result") or []
    if not isinstance(result, list) or not all(isinstance(r, Mapping) for r in result):
        raise ValueError("`result` must be a list of regions")
    return AnnotationRecord(
        id=label_studio_id(raw["id"]),
        task_id=label_studio_id(task if task is not None else task_id),
        result=list(result),
        was_cancelled=bool(raw.get("was_cancelled")),
        updated_at=_timestamp(raw.get("updated_at") or raw.get("created_at")),
    )


def _comparable(answers: Mapping[str, Any], gold_name: str) -> dict[str, str]:
    return {
        k: json.dumps(v, sort_keys=True, ensure_ascii=False)
        for k, v in answers.items()
        if k != gold_name
    }


def agreement(schema: TaskSchema, results: list[list[dict[str, Any]]]) -> float | None:
    """Mean pairwise share of identically answered questions; None for fewer than two."""
    if len(results) < 2:
        return None
    answers = [_comparable(read_answers(schema, r)[0], schema.training.gold) for r in results]
    scores = []
    for a, b in itertools.combinations(answers, 2):
        asked = set(a) | set(b)
        scores.append(1.0 if not asked else sum(a.get(q) == b.get(q) for q in asked) / len(asked))
    return sum(scores) / len(scores)


# An event to record: (type, Loomstack project, data).
Event = tuple[str, str, dict[str, Any]]
# One task's annotations that changed: (event type, Label Studio annotation id).
Changed = list[tuple[str, int]]
# What an event says about its task (and the task's gold before the change).
_TASK_FIELDS = tuple(
    tables.tasks.c[name]
    for name in (
        "ls_task_id",
        "project",
        "batch_id",
        "custom_id",
        "schema_id",
        "schema_version",
        "gold",
    )
)


def _change(recorded: tuple[str, bool] | None, record: AnnotationRecord) -> str | None:
    """The event of recording `record` over what is recorded (result, cancelled); None when
    it is the same annotation again (a re-delivery, an unchanged save)."""
    if recorded is None:
        return ANNOTATION_CREATED
    if recorded != (record.result_json, bool(record.was_cancelled)):
        return ANNOTATION_UPDATED
    return None


def _task_events(
    task: sa.Row, changed: Changed, gold: bool, annotation_id: int | None, origin: str
) -> list[Event]:
    """A task's events: its changed annotations, then its gold star if that changed."""

    def data(ls_annotation_id: int | None) -> dict[str, Any]:
        return {
            "ls_task_id": int(task.ls_task_id),
            "ls_annotation_id": ls_annotation_id,
            "batch_id": task.batch_id,
            "custom_id": task.custom_id,
            "schema_id": task.schema_id,
            "schema_version": int(task.schema_version),
            "gold": gold,
            "origin": origin,
        }

    events = [(kind, task.project, data(ls_annotation_id)) for kind, ls_annotation_id in changed]
    if gold != bool(task.gold):
        events.append((GOLD_SET if gold else GOLD_REMOVED, task.project, data(annotation_id)))
    return events


class AnnotationStore:
    """Records annotations, keeps each task's derived fields up to date and records the
    changes as curation events."""

    def __init__(self, engine: Engine, catalog: SchemaCatalog) -> None:
        self.engine = engine
        self.catalog = catalog
        self.events = CurationEvents(engine)
        self._claims: dict[int, list[str]] = {}
        self._claims_lock = threading.Lock()

    @contextlib.contextmanager
    def on_behalf_of(self, origin: str, task_ids: Iterable[int]) -> Iterator[None]:
        """While the caller changes these tasks in Label Studio for `origin`, what Label Studio
        reports about them (its webhook, the reconcile) is recorded as `origin`'s change."""
        ids = list(dict.fromkeys(int(i) for i in task_ids))
        with self._claims_lock:
            for task_id in ids:
                self._claims.setdefault(task_id, []).append(origin)
        try:
            yield
        finally:
            with self._claims_lock:
                for task_id in ids:
                    claims = self._claims[task_id]
                    claims.remove(origin)
                    if not claims:
                        del self._claims[task_id]

    def _origin(self, task_id: int, origin: str) -> str:
        if origin != ORIGIN_LABEL_STUDIO:
            return origin
        with self._claims_lock:
            claims = self._claims.get(task_id)
            return claims[-1] if claims else origin

    def _record(self, conn: sa.Connection, events: Iterable[Event]) -> None:
        for kind, project, data in events:
            self.events.record(conn, kind, project, data)

    def _schema(
        self, conn: sa.Connection, task_id: int, ls_project_id: int | None = None
    ) -> TaskSchema | None:
        """The schema of one of our tasks; None for a task that is not ours (or, with
        `ls_project_id`, not in that Label Studio project)."""
        query = sa.select(tables.tasks.c.schema_id, tables.tasks.c.schema_version).where(
            tables.tasks.c.ls_task_id == task_id
        )
        if ls_project_id is not None:
            query = query.where(tables.tasks.c.ls_project_id == ls_project_id)
        row = conn.execute(query).first()
        if row is None:
            return None
        try:
            return self.catalog.get(row.schema_id, row.schema_version)
        except Exception:
            return None

    def upsert(
        self,
        records: Iterable[AnnotationRecord],
        ls_project_id: int | None = None,
        *,
        origin: str = ORIGIN_LABEL_STUDIO,
    ) -> int:
        """Records new or changed annotations of our tasks (with `ls_project_id`: of that Label
        Studio project's tasks only); returns how many were ours."""
        recorded = 0
        with write_transaction(self.engine) as conn:
            touched: dict[int, Changed] = {}
            for record in records:
                schema = self._schema(conn, record.task_id, ls_project_id)
                if schema is None:
                    continue
                change = self._write(conn, schema, record)
                changed = touched.setdefault(record.task_id, [])
                if change is not None:
                    changed.append((change, record.id))
                recorded += 1
            events: list[Event] = []
            for task_id, changed in touched.items():
                events += self._refresh_task(conn, task_id, changed, origin)
            self._record(conn, events)
        return recorded

    def delete(
        self,
        annotation_ids: Iterable[int],
        ls_project_id: int | None = None,
        *,
        origin: str = ORIGIN_LABEL_STUDIO,
    ) -> int:
        """Forgets deleted annotations (with `ls_project_id`: of that Label Studio project's
        tasks only); returns how many were known."""
        ids = [int(i) for i in annotation_ids]
        if not ids:
            return 0
        a, t = tables.ls_annotations, tables.tasks
        with write_transaction(self.engine) as conn:
            if ls_project_id is not None:
                ids = list(
                    conn.execute(
                        sa.select(a.c.ls_annotation_id)
                        .join(t, t.c.ls_task_id == a.c.ls_task_id)
                        .where(a.c.ls_annotation_id.in_(ids), t.c.ls_project_id == ls_project_id)
                    ).scalars()
                )
            task_ids = set(
                conn.execute(
                    sa.select(tables.ls_annotations.c.ls_task_id).where(
                        tables.ls_annotations.c.ls_annotation_id.in_(ids)
                    )
                ).scalars()
            )
            deleted = conn.execute(
                tables.ls_annotations.delete().where(
                    tables.ls_annotations.c.ls_annotation_id.in_(ids)
                )
            ).rowcount
            events: list[Event] = []
            for task_id in task_ids:
                events += self._refresh_task(conn, task_id, [], origin)
            self._record(conn, events)
        return int(deleted or 0)

    def annotated_task_ids(self, ls_project_id: int) -> list[int]:
        """Tasks of a Label Studio project with at least one recorded annotation."""
        a, t = tables.ls_annotations, tables.tasks
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(sa.distinct(a.c.ls_task_id))
                    .join(t, t.c.ls_task_id == a.c.ls_task_id)
                    .where(t.c.ls_project_id == ls_project_id)
                ).scalars()
            )

    def replace_task(
        self, task_id: int, records: list[AnnotationRecord], *, origin: str = ORIGIN_LABEL_STUDIO
    ) -> bool:
        """Makes a task's annotations exactly `records` (the reconcile); False if not ours."""
        return task_id in self.replace_tasks({task_id: records}, origin=origin)

    def replace_tasks(
        self,
        tasks: Mapping[int, list[AnnotationRecord]],
        ls_project_id: int | None = None,
        *,
        origin: str = ORIGIN_LABEL_STUDIO,
    ) -> set[int]:
        """`replace_task` for a page of tasks at once (with `ls_project_id`: only tasks we
        recorded in that Label Studio project); returns the ids that are ours.

        Reads what is recorded for the whole page in one query and writes only the tasks whose
        annotations changed, in one transaction, so a reconcile over a large project is cheap.
        """
        if not tasks:
            return set()
        ids = list(tasks)
        t = tables.tasks.c
        query = sa.select(t.ls_task_id, t.schema_id, t.schema_version, t.predicted_json).where(
            t.ls_task_id.in_(ids)
        )
        if ls_project_id is not None:
            query = query.where(t.ls_project_id == ls_project_id)
        with self.engine.connect() as conn:
            ours = {
                row.ls_task_id: (row.schema_id, row.schema_version, row.predicted_json)
                for row in conn.execute(query)
            }
            known: dict[int, dict[int, tuple[str, bool]]] = {i: {} for i in ours}
            annotators: dict[int, str] = {}
            for row in conn.execute(
                sa.select(
                    tables.ls_annotations.c.ls_task_id,
                    tables.ls_annotations.c.ls_annotation_id,
                    tables.ls_annotations.c.result_json,
                    tables.ls_annotations.c.was_cancelled,
                    tables.ls_annotations.c.annotator,
                ).where(tables.ls_annotations.c.ls_task_id.in_(list(ours)))
            ):
                known[row.ls_task_id][row.ls_annotation_id] = (row.result_json, row.was_cancelled)
                annotators[row.ls_annotation_id] = row.annotator
        changed = []
        for task_id in ours:
            wanted = {r.id: (r.result_json, r.was_cancelled) for r in tasks[task_id]}
            if wanted != known[task_id]:
                changed.append((task_id, set(known[task_id]) - set(wanted)))
        if changed:
            self._write_changed(changed, tasks, ours, known, annotators, origin)
        return set(ours)

    def _write_changed(
        self,
        changed: list[tuple[int, set[int]]],
        tasks: Mapping[int, list[AnnotationRecord]],
        ours: Mapping[int, tuple[str, int, str]],
        known: Mapping[int, Mapping[int, tuple[str, bool]]],
        annotators: Mapping[int, str],
        origin: str,
    ) -> None:
        """Bulk writes of a page's changed tasks: one statement per kind of change."""
        stale: list[int] = []
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        task_rows: list[dict[str, Any]] = []
        annotation_changes: dict[int, Changed] = {}
        for task_id, gone in changed:
            schema_id, version, predicted_json = ours[task_id]
            try:
                schema = self.catalog.get(schema_id, version)
            except Exception:
                continue
            stale += gone
            live = []
            changes = annotation_changes[task_id] = []
            for record in tasks[task_id]:
                values = self._values(schema, record)
                before = known[task_id].get(record.id)
                # An automatic annotation stays one while its result is what was accepted.
                same = before is not None and before[0] == record.result_json
                values["annotator"] = annotators.get(record.id, "") if same else ""
                (updates if before is not None else inserts).append(values)
                if (change := _change(before, record)) is not None:
                    changes.append((change, record.id))
                if not record.was_cancelled:
                    live.append(values)
            live.sort(key=lambda v: (v["updated_at"], v["ls_annotation_id"]))
            task_rows.append({"b_task_id": task_id, **derived(schema, predicted_json, live)})
        a, t = tables.ls_annotations, tables.tasks
        with write_transaction(self.engine) as conn:
            written = [r["b_task_id"] for r in task_rows]
            before_tasks: dict[int, sa.Row] = {}
            for start in range(0, len(written), 500):
                for row in conn.execute(
                    sa.select(*_TASK_FIELDS).where(t.c.ls_task_id.in_(written[start : start + 500]))
                ):
                    before_tasks[row.ls_task_id] = row
            for start in range(0, len(stale), 500):
                conn.execute(a.delete().where(a.c.ls_annotation_id.in_(stale[start : start + 500])))
            if inserts:
                conn.execute(a.insert(), inserts)
            if updates:
                columns = [k for k in updates[0] if k != "ls_annotation_id"]
                conn.execute(
                    a.update()
                    .where(a.c.ls_annotation_id == sa.bindparam("b_id"))
                    .values({k: sa.bindparam(f"b_{k}") for k in columns}),
                    [
                        {"b_id": u["ls_annotation_id"], **{f"b_{k}": u[k] for k in columns}}
                        for u in updates
                    ],
                )
            if task_rows:
                columns = [k for k in task_rows[0] if k != "b_task_id"]
                conn.execute(
                    t.update()
                    .where(t.c.ls_task_id == sa.bindparam("b_task_id"))
                    .values({k: sa.bindparam(f"b_{k}") for k in columns}),
                    [
                        {"b_task_id": r["b_task_id"], **{f"b_{k}": r[k] for k in columns}}
                        for r in task_rows
                    ],
                )
            events: list[Event] = []
            for task_row in task_rows:
                task_id = task_row["b_task_id"]
                if (task := before_tasks.get(task_id)) is not None:
                    events += _task_events(
                        task,
                        annotation_changes[task_id],
                        bool(task_row["gold"]),
                        task_row["annotation_id"],
                        self._origin(task_id, origin),
                    )
            self._record(conn, events)

    @staticmethod
    def _values(schema: TaskSchema, record: AnnotationRecord) -> dict[str, Any]:
        answers, gold, _ = read_answers(schema, record.result)
        return {
            "ls_annotation_id": record.id,
            "ls_task_id": record.task_id,
            "result_json": record.result_json,
            "gold": gold,
            "rating": _rating(schema, answers),
            "was_cancelled": record.was_cancelled,
            "updated_at": record.updated_at,
        }

    def _write(
        self, conn: sa.Connection, schema: TaskSchema, record: AnnotationRecord
    ) -> str | None:
        """Records one annotation; the event type of the change, None if it changed nothing."""
        answers, gold, _ = read_answers(schema, record.result)
        values = {
            "ls_task_id": record.task_id,
            "result_json": json.dumps(record.result, sort_keys=True, ensure_ascii=False),
            "gold": gold,
            "rating": _rating(schema, answers),
            "was_cancelled": record.was_cancelled,
            "updated_at": record.updated_at,
        }
        a = tables.ls_annotations
        recorded = conn.execute(
            sa.select(a.c.result_json, a.c.was_cancelled).where(a.c.ls_annotation_id == record.id)
        ).first()
        if recorded is None:
            conn.execute(a.insert().values(ls_annotation_id=record.id, annotator="", **values))
            return ANNOTATION_CREATED
        if recorded.result_json != values["result_json"]:
            # Changed in Label Studio: a person's now, even if it was automatic.
            conn.execute(
                a.update().where(a.c.ls_annotation_id == record.id).values(annotator="", **values)
            )
        else:
            conn.execute(a.update().where(a.c.ls_annotation_id == record.id).values(**values))
        return _change((recorded.result_json, bool(recorded.was_cancelled)), record)

    def record_automatic(
        self,
        conn: sa.Connection,
        records: Iterable[AnnotationRecord],
        *,
        origin: str = ORIGIN_AUTO_ACCEPT,
    ) -> int:
        """Records auto-accepted annotations (annotator `auto-accept`) in the caller's
        transaction and refreshes their tasks; returns how many were ours. The caller writes
        nothing after it but rows no event writer waits for (events.py: the feed's lock)."""
        a = tables.ls_annotations
        touched: dict[int, Changed] = {}
        for record in records:
            schema = self._schema(conn, record.task_id)
            if schema is None:
                continue
            recorded = conn.execute(
                sa.select(a.c.result_json, a.c.was_cancelled).where(
                    a.c.ls_annotation_id == record.id
                )
            ).first()
            values = {**self._values(schema, record), "annotator": AUTO_ACCEPT_ANNOTATOR}
            conn.execute(a.delete().where(a.c.ls_annotation_id == record.id))
            conn.execute(a.insert().values(**values))
            change = _change(
                None if recorded is None else (recorded.result_json, bool(recorded.was_cancelled)),
                record,
            )
            changed = touched.setdefault(record.task_id, [])
            if change is not None:
                changed.append((change, record.id))
        events: list[Event] = []
        for task_id, changed in touched.items():
            events += self._refresh_task(conn, task_id, changed, origin)
        self._record(conn, events)
        return len(touched)

    def _refresh_task(
        self, conn: sa.Connection, task_id: int, changed: Changed, origin: str
    ) -> list[Event]:
        """Derives a task's fields from its recorded annotations; the events of the change."""
        schema = self._schema(conn, task_id)
        task = conn.execute(
            sa.select(*_TASK_FIELDS, tables.tasks.c.predicted_json).where(
                tables.tasks.c.ls_task_id == task_id
            )
        ).first()
        if schema is None or task is None:
            return []
        rows = conn.execute(
            sa.select(tables.ls_annotations)
            .where(
                tables.ls_annotations.c.ls_task_id == task_id,
                tables.ls_annotations.c.was_cancelled.is_(False),
            )
            .order_by(tables.ls_annotations.c.updated_at, tables.ls_annotations.c.ls_annotation_id)
        ).all()
        values = derived(schema, task.predicted_json, [dict(r._mapping) for r in rows])
        conn.execute(
            tables.tasks.update().where(tables.tasks.c.ls_task_id == task_id).values(**values)
        )
        return _task_events(
            task,
            changed,
            bool(values["gold"]),
            values["annotation_id"],
            self._origin(task_id, origin),
        )


def derived(
    schema: TaskSchema, predicted_json: str | None, rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A task's fields from its non-cancelled annotations (oldest first, as recorded rows)."""
    if not rows:
        return {
            "status": IMPORTED,
            "annotation_count": 0,
            "gold": False,
            "rating": None,
            "agreement": None,
            "corrected": False,
            "annotation_id": None,
            "result_json": None,
            "annotated_at": None,
            "auto_accepted": False,
        }
    latest = rows[-1]
    results = [json.loads(r["result_json"]) for r in rows]
    predicted = json.loads(predicted_json or "{}")
    given = {
        r["from_name"]: r["value"]
        for r in results[-1]
        if r.get("from_name") != schema.training.gold
    }
    predicted.pop(schema.training.gold, None)
    return {
        "status": ANNOTATED,
        "annotation_count": len(rows),
        "gold": latest["gold"],
        "rating": latest["rating"],
        "agreement": agreement(schema, results),
        "corrected": _normal(given) != _normal(predicted),
        "annotation_id": latest["ls_annotation_id"],
        "result_json": latest["result_json"],
        "annotated_at": latest["updated_at"],
        "auto_accepted": latest.get("annotator") == AUTO_ACCEPT_ANNOTATOR,
    }


def _normal(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, ensure_ascii=False)


def _rating(schema: TaskSchema, answers: Mapping[str, Any]) -> int | None:
    """The first rating question's answer; None when it is not a whole number of stars the
    question allows (Label Studio's API takes any value, our column and proto an int32)."""
    for question in schema.questions:
        if isinstance(question, RatingQuestion) and question.name in answers:
            value = answers[question.name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            if value != int(value) or not 0 <= value <= question.max:
                return None
            return int(value)
    return None
