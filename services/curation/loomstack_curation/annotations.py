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
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction

from . import tables
from .auto_accept import ANNOTATOR as AUTO_ACCEPT_ANNOTATOR
from .catalog import SchemaCatalog
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


class AnnotationStore:
    """Records annotations and keeps each task's derived fields up to date."""

    def __init__(self, engine: Engine, catalog: SchemaCatalog) -> None:
        self.engine = engine
        self.catalog = catalog

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

    def upsert(self, records: Iterable[AnnotationRecord], ls_project_id: int | None = None) -> int:
        """Records new or changed annotations of our tasks (with `ls_project_id`: of that Label
        Studio project's tasks only); returns how many were ours."""
        recorded = 0
        with write_transaction(self.engine) as conn:
            touched: set[int] = set()
            for record in records:
                schema = self._schema(conn, record.task_id, ls_project_id)
                if schema is None:
                    continue
                self._write(conn, schema, record)
                touched.add(record.task_id)
                recorded += 1
            for task_id in touched:
                self._refresh_task(conn, task_id)
        return recorded

    def delete(self, annotation_ids: Iterable[int], ls_project_id: int | None = None) -> int:
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
            for task_id in task_ids:
                self._refresh_task(conn, task_id)
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

    def replace_task(self, task_id: int, records: list[AnnotationRecord]) -> bool:
        """Makes a task's annotations exactly `records` (the reconcile); False if not ours."""
        return task_id in self.replace_tasks({task_id: records})

    def replace_tasks(
        self, tasks: Mapping[int, list[AnnotationRecord]], ls_project_id: int | None = None
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
            self._write_changed(changed, tasks, ours, known, annotators)
        return set(ours)

    def _write_changed(
        self,
        changed: list[tuple[int, set[int]]],
        tasks: Mapping[int, list[AnnotationRecord]],
        ours: Mapping[int, tuple[str, int, str]],
        known: Mapping[int, Mapping[int, tuple[str, bool]]],
        annotators: Mapping[int, str],
    ) -> None:
        """Bulk writes of a page's changed tasks: one statement per kind of change."""
        stale: list[int] = []
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        task_rows: list[dict[str, Any]] = []
        for task_id, gone in changed:
            schema_id, version, predicted_json = ours[task_id]
            try:
                schema = self.catalog.get(schema_id, version)
            except Exception:
                continue
            stale += gone
            live = []
            for record in tasks[task_id]:
                values = self._values(schema, record)
                before = known[task_id].get(record.id)
                # An automatic annotation stays one while its result is what was accepted.
                same = before is not None and before[0] == record.result_json
                values["annotator"] = annotators.get(record.id, "") if same else ""
                (updates if before is not None else inserts).append(values)
                if not record.was_cancelled:
                    live.append(values)
            live.sort(key=lambda v: (v["updated_at"], v["ls_annotation_id"]))
            task_rows.append({"b_task_id": task_id, **derived(schema, predicted_json, live)})
        a, t = tables.ls_annotations, tables.tasks
        with write_transaction(self.engine) as conn:
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

    def _write(self, conn: sa.Connection, schema: TaskSchema, record: AnnotationRecord) -> None:
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
            sa.select(a.c.result_json).where(a.c.ls_annotation_id == record.id)
        ).first()
        if recorded is None:
            conn.execute(a.insert().values(ls_annotation_id=record.id, annotator="", **values))
        elif recorded.result_json != values["result_json"]:
            # Changed in Label Studio: a person's now, even if it was automatic.
            conn.execute(
                a.update().where(a.c.ls_annotation_id == record.id).values(annotator="", **values)
            )
        else:
            conn.execute(a.update().where(a.c.ls_annotation_id == record.id).values(**values))

    def record_automatic(self, conn: sa.Connection, records: Iterable[AnnotationRecord]) -> int:
        """Records auto-accepted annotations (annotator `auto-accept`) in the caller's
        transaction and refreshes their tasks; returns how many were ours."""
        a = tables.ls_annotations
        touched: set[int] = set()
        for record in records:
            schema = self._schema(conn, record.task_id)
            if schema is None:
                continue
            values = {**self._values(schema, record), "annotator": AUTO_ACCEPT_ANNOTATOR}
            conn.execute(a.delete().where(a.c.ls_annotation_id == record.id))
            conn.execute(a.insert().values(**values))
            touched.add(record.task_id)
        for task_id in touched:
            self._refresh_task(conn, task_id)
        return len(touched)

    def _refresh_task(self, conn: sa.Connection, task_id: int) -> None:
        schema = self._schema(conn, task_id)
        task = conn.execute(
            sa.select(tables.tasks.c.predicted_json).where(tables.tasks.c.ls_task_id == task_id)
        ).first()
        if schema is None or task is None:
            return
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
