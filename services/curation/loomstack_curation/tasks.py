"""Curation tasks as the API shows them: listing, statistics, and gold stars set from our side.

A gold star given here is written to Label Studio (the annotation gets the gold region, or an
annotation is made from the prediction when there is none), so Label Studio and our tables
say the same; the task's fields are then recorded as the annotation webhook would, and the
curation feed names the caller's `origin` as the one who made the change (`api`, or
`plugin:<name>` for a plugin's), also when Label Studio's webhook reports it first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.errors import InvalidArgument, NotFound

from . import tables
from .annotations import AnnotationStore, annotation_record
from .catalog import SchemaCatalog
from .events import ORIGIN_API
from .labelstudio_api import label_studio_unavailable, task_payload, unavailable_or_none
from .predictions import regions
from .projects import ProjectMap

MAX_GOLD_TASKS = 1000


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks to list."""

    schema_id: str = ""
    status: str = ""
    gold_only: bool = False
    batch_id: str = ""


@dataclass(frozen=True)
class TaskView:
    """A confirmed task as the API shows it (`id` is our row id, the list's cursor)."""

    id: int
    project: str
    ls_task_id: int | None
    ls_project_id: int
    schema_id: str
    schema_version: int
    batch_id: str
    custom_id: str
    status: str
    gold: bool
    annotation_count: int
    corrected: bool
    data_json: str
    created_at: float
    annotated_at: float | None
    auto_accepted: bool
    agreement: float | None
    rating: int | None
    # The annotation a training example uses, and its Label Studio result regions (JSON).
    annotation_id: int | None = None
    result_json: str | None = None


def task_view(row: sa.Row) -> TaskView:
    return TaskView(
        id=row.id,
        project=row.project,
        ls_task_id=row.ls_task_id,
        ls_project_id=row.ls_project_id,
        schema_id=row.schema_id,
        schema_version=row.schema_version,
        batch_id=row.batch_id,
        custom_id=row.custom_id,
        status=row.status,
        gold=bool(row.gold),
        annotation_count=row.annotation_count,
        corrected=bool(row.corrected),
        data_json=row.data_json,
        created_at=row.created_at,
        annotated_at=row.annotated_at,
        auto_accepted=bool(row.auto_accepted),
        agreement=row.agreement,
        rating=row.rating,
        annotation_id=row.annotation_id,
        result_json=row.result_json,
    )


@dataclass(frozen=True)
class Statistics:
    """Counts over tasks."""

    schema_id: str
    tasks: int
    annotated: int
    gold: int
    corrected: int
    multi_annotated: int
    mean_agreement: float


class TaskQueries:
    """Reads of the tasks table and the gold-star write."""

    def __init__(
        self,
        engine: Engine,
        catalog: SchemaCatalog,
        projects: ProjectMap,
        annotations: AnnotationStore,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.projects = projects
        self.annotations = annotations

    def list_tasks(
        self, project: str | None, flt: TaskFilter, limit: int = 100, before: int = 0
    ) -> list[TaskView]:
        """Confirmed tasks, newest first; `before` is the last row id of the previous page."""
        c = tables.tasks.c
        query = sa.select(tables.tasks).where(c.ls_task_id.is_not(None))
        if project is not None:
            query = query.where(c.project == project)
        if flt.schema_id:
            query = query.where(c.schema_id == flt.schema_id)
        if flt.status:
            query = query.where(c.status == flt.status)
        if flt.gold_only:
            query = query.where(c.gold.is_(True))
        if flt.batch_id:
            query = query.where(c.batch_id == flt.batch_id)
        if before:
            query = query.where(c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(c.id.desc()).limit(limit)).all()
        return [task_view(r) for r in rows]

    def _rows(self, project: str | None, task_ids: Iterable[int]) -> list[sa.Row]:
        """Tasks by Label Studio id; NotFound names the first unknown one."""
        ids = list(dict.fromkeys(int(i) for i in task_ids))
        c = tables.tasks.c
        query = sa.select(tables.tasks).where(c.ls_task_id.in_(ids))
        if project is not None:
            query = query.where(c.project == project)
        with self.engine.connect() as conn:
            rows = {r.ls_task_id: r for r in conn.execute(query).all()}
        for task_id in ids:
            if task_id not in rows:
                raise NotFound(f"no task {task_id}", param="task_ids")
        return [rows[i] for i in ids]

    def statistics(self, project: str | None, schema_id: str = "") -> list[Statistics]:
        """Counts per schema id."""
        c = tables.tasks.c
        multi = sa.case((c.annotation_count >= 2, 1), else_=0)
        query = sa.select(
            c.schema_id,
            sa.func.count().label("tasks"),
            sa.func.sum(sa.case((c.status == "annotated", 1), else_=0)).label("annotated"),
            sa.func.sum(sa.case((c.gold.is_(True), 1), else_=0)).label("gold"),
            sa.func.sum(sa.case((c.corrected.is_(True), 1), else_=0)).label("corrected"),
            sa.func.sum(multi).label("multi"),
            sa.func.avg(c.agreement).label("agreement"),
        ).where(c.ls_task_id.is_not(None))
        if project is not None:
            query = query.where(c.project == project)
        if schema_id:
            query = query.where(c.schema_id == schema_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.group_by(c.schema_id).order_by(c.schema_id)).all()
        return [
            Statistics(
                r.schema_id,
                int(r.tasks or 0),
                int(r.annotated or 0),
                int(r.gold or 0),
                int(r.corrected or 0),
                int(r.multi or 0),
                float(r.agreement or 0.0),
            )
            for r in rows
        ]

    def statistics_report(
        self, project: str | None, schema_id: str = ""
    ) -> tuple[Statistics, list[Statistics]]:
        """The counts over every schema (`schema_id` empty) or one, and per schema: sums, and
        the agreement's mean weighted by each schema's multiply annotated tasks."""
        per_schema = self.statistics(project, schema_id)
        multi = sum(s.multi_annotated for s in per_schema)
        mean = (
            sum(s.mean_agreement * s.multi_annotated for s in per_schema) / multi if multi else 0.0
        )
        total = Statistics(
            schema_id,
            sum(s.tasks for s in per_schema),
            sum(s.annotated for s in per_schema),
            sum(s.gold for s in per_schema),
            sum(s.corrected for s in per_schema),
            multi,
            mean,
        )
        return total, per_schema

    def get_many(self, project: str | None, task_ids: Iterable[int]) -> list[TaskView]:
        """Tasks by Label Studio id; NotFound names the first unknown one."""
        return [task_view(r) for r in self._rows(project, task_ids)]

    def set_gold(
        self, project: str | None, task_ids: list[int], gold: bool, *, origin: str = ORIGIN_API
    ) -> list[TaskView]:
        """Gives (or takes) the gold star of tasks in Label Studio and records the result as
        `origin`'s change."""
        if not task_ids:
            raise InvalidArgument("name at least one task", param="task_ids")
        if len(task_ids) > MAX_GOLD_TASKS:
            raise InvalidArgument(f"at most {MAX_GOLD_TASKS} tasks at once", param="task_ids")
        rows = self._rows(project, task_ids)
        client = self.projects.client
        if client is None:
            raise label_studio_unavailable("Label Studio is not configured")
        with self.annotations.on_behalf_of(origin, [row.ls_task_id for row in rows]):
            for row in rows:
                schema = self.catalog.get(row.schema_id, row.schema_version)
                gold_name = schema.training.gold
                star = regions(schema, {}, gold=True)
                try:
                    if row.result_json is not None and row.annotation_id is not None:
                        result = [
                            r
                            for r in json.loads(row.result_json)
                            if r.get("from_name") != gold_name
                        ]
                        if gold:
                            result += star
                        saved: Any = client.annotations.update(id=row.annotation_id, result=result)
                    elif gold:
                        task = task_payload(client.tasks.get(id=str(row.ls_task_id)))
                        predictions = task.get("predictions") or []
                        base = list(predictions[0].get("result") or []) if predictions else []
                        saved = client.annotations.create(id=row.ls_task_id, result=base + star)
                    else:
                        continue
                except Exception as exc:
                    raise unavailable_or_none(exc) or exc from None
                self.annotations.upsert(
                    [annotation_record(task_payload(saved), row.ls_task_id)], origin=origin
                )
        return self.get_many(project, task_ids)
