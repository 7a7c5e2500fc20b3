"""Annotations from Label Studio, recorded per task: gold stars, ratings, corrections, agreement.

Two ways in, same result: the webhook (webhook.py) records one annotation as it happens, and
the reconcile (reconcile.py) replaces a task's whole annotation set with what Label Studio has,
so a missed webhook (or a deleted annotation) loses nothing.

Per task, the latest non-cancelled annotation is the one a training example uses; `gold` is its
gold flag, `rating` its first rating question, `corrected` whether its answers differ from the
prediction; `agreement` (two or more annotations) is the mean, over pairs of annotations, of
the share of questions answered identically.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction

from . import tables
from .catalog import SchemaCatalog
from .examples import read_answers
from .importer import ANNOTATED, IMPORTED
from .task_schema import RatingQuestion, TaskSchema


@dataclass(frozen=True)
class AnnotationRecord:
    """An annotation as Label Studio reports it."""

    id: int
    task_id: int
    result: list[dict[str, Any]]
    was_cancelled: bool
    updated_at: float


def _timestamp(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def annotation_record(raw: Mapping[str, Any], task_id: int | None = None) -> AnnotationRecord:
    """An annotation from a webhook payload, an export or the tasks API."""
    task = raw.get("task")
    if isinstance(task, Mapping):
        task = task.get("id")
    return AnnotationRecord(
        id=int(raw["id"]),
        task_id=int(task if task is not None else task_id),  # type: ignore[arg-type]
        result=list(raw.get("result") or []),
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

    def _schema(self, conn: sa.Connection, task_id: int) -> TaskSchema | None:
        row = conn.execute(
            sa.select(tables.tasks.c.schema_id, tables.tasks.c.schema_version).where(
                tables.tasks.c.ls_task_id == task_id
            )
        ).first()
        if row is None:
            return None
        try:
            return self.catalog.get(row.schema_id, row.schema_version)
        except Exception:
            return None

    def upsert(self, records: Iterable[AnnotationRecord]) -> int:
        """Records new or changed annotations of our tasks; returns how many were ours."""
        recorded = 0
        with write_transaction(self.engine) as conn:
            touched: set[int] = set()
            for record in records:
                schema = self._schema(conn, record.task_id)
                if schema is None:
                    continue
                self._write(conn, schema, record)
                touched.add(record.task_id)
                recorded += 1
            for task_id in touched:
                self._refresh_task(conn, task_id)
        return recorded

    def delete(self, annotation_ids: Iterable[int]) -> int:
        """Forgets deleted annotations; returns how many were known."""
        ids = [int(i) for i in annotation_ids]
        if not ids:
            return 0
        with write_transaction(self.engine) as conn:
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

    def replace_task(self, task_id: int, records: list[AnnotationRecord]) -> bool:
        """Makes a task's annotations exactly `records` (the reconcile); False if not ours.

        Skips the write when nothing changed, so a reconcile over a large project is cheap.
        """
        with self.engine.connect() as conn:
            schema = self._schema(conn, task_id)
            if schema is None:
                return False
            known = {
                row.ls_annotation_id: (row.result_json, row.was_cancelled)
                for row in conn.execute(
                    sa.select(
                        tables.ls_annotations.c.ls_annotation_id,
                        tables.ls_annotations.c.result_json,
                        tables.ls_annotations.c.was_cancelled,
                    ).where(tables.ls_annotations.c.ls_task_id == task_id)
                )
            }
        wanted = {
            r.id: (json.dumps(r.result, sort_keys=True, ensure_ascii=False), r.was_cancelled)
            for r in records
        }
        if known == wanted:
            return True
        with write_transaction(self.engine) as conn:
            stale = set(known) - set(wanted)
            if stale:
                conn.execute(
                    tables.ls_annotations.delete().where(
                        tables.ls_annotations.c.ls_annotation_id.in_(stale)
                    )
                )
            for record in records:
                self._write(conn, schema, record)
            self._refresh_task(conn, task_id)
        return True

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
        updated = conn.execute(
            tables.ls_annotations.update()
            .where(tables.ls_annotations.c.ls_annotation_id == record.id)
            .values(**values)
        ).rowcount
        if not updated:
            conn.execute(
                tables.ls_annotations.insert().values(ls_annotation_id=record.id, **values)
            )

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
        values: dict[str, Any]
        if not rows:
            values = {
                "status": IMPORTED,
                "annotation_count": 0,
                "gold": False,
                "rating": None,
                "agreement": None,
                "corrected": False,
                "annotation_id": None,
                "result_json": None,
                "annotated_at": None,
            }
        else:
            latest = rows[-1]
            results = [json.loads(r.result_json) for r in rows]
            predicted = json.loads(task.predicted_json or "{}")
            given = {
                r["from_name"]: r["value"]
                for r in results[-1]
                if r.get("from_name") != schema.training.gold
            }
            predicted.pop(schema.training.gold, None)
            values = {
                "status": ANNOTATED,
                "annotation_count": len(rows),
                "gold": latest.gold,
                "rating": latest.rating,
                "agreement": agreement(schema, results),
                "corrected": _normal(given) != _normal(predicted),
                "annotation_id": latest.ls_annotation_id,
                "result_json": latest.result_json,
                "annotated_at": latest.updated_at,
            }
        conn.execute(
            tables.tasks.update().where(tables.tasks.c.ls_task_id == task_id).values(**values)
        )


def _normal(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, ensure_ascii=False)


def _rating(schema: TaskSchema, answers: Mapping[str, Any]) -> int | None:
    for question in schema.questions:
        if isinstance(question, RatingQuestion) and question.name in answers:
            return int(answers[question.name])
    return None
