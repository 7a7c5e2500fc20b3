"""Moves tasks out of a Label Studio project that belongs to another Loomstack project.

Before Label Studio projects were per Loomstack project, one Label Studio project held every
project's tasks of a schema version; migration 0003 gave each such project to the Loomstack
project that owned most of its tasks. The other projects' tasks are moved here, with their
data, predictions and annotations, into their own project's Label Studio project (created like
an import creates it), and the old copies are deleted. Exactly once across crashes:

- the tasks of a chunk are marked (`moving_to`) before the copies are sent;
- once Label Studio answers, each task's new ids (task and annotations) are recorded, and its
  old copy listed for deletion (`curation_relocations`), in one transaction;
- a pass that finds marked tasks (the previous one died in between) looks for their copies in
  the target project (each task's data names its batch and custom_id) and records the ones it
  finds instead of sending them again;
- the listed old copies are deleted from Label Studio, then forgotten.

Automatic annotations (auto-accept) stay automatic. A task whose old copy Label Studio no
longer has is rebuilt from what we recorded (data and annotations; no prediction). A task
whose schema version the catalog does not know waits, where it is, until it does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from label_studio_sdk.client import LabelStudio
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import NotFound

from . import tables
from .annotations import AnnotationStore, annotation_record
from .catalog import SchemaCatalog
from .importer import BATCH_KEY, CUSTOM_ID_KEY
from .labelstudio_api import (
    delete_tasks,
    import_tasks,
    label_studio_unavailable,
    task_pages,
    unavailable_or_none,
)
from .projects import ProjectMap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Misplaced:
    """A project's tasks of one schema version in another project's Label Studio project."""

    project: str
    ls_project_id: int
    schema_id: str
    schema_version: int
    tasks: int


@dataclass(frozen=True)
class RelocationOutcome:
    """Counts of one pass."""

    moved: int
    deleted: int
    waiting: int


class Relocation:
    """One pass moves every misplaced task (synchronous; call it from a thread)."""

    def __init__(
        self,
        engine: Engine,
        catalog: SchemaCatalog,
        projects: ProjectMap,
        annotations: AnnotationStore,
        *,
        chunk_size: int = 200,
        send: Callable[[LabelStudio, int, list[dict[str, Any]]], list[int]] = import_tasks,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.projects = projects
        self.annotations = annotations
        self.chunk_size = chunk_size
        # Sends a chunk to Label Studio, returns the new task ids in order (tests interrupt it).
        self._send = send

    @property
    def client(self) -> LabelStudio:
        if self.projects.client is None:
            raise label_studio_unavailable("Label Studio is not configured")
        return self.projects.client

    def misplaced(self) -> list[Misplaced]:
        """Every group of tasks recorded in a Label Studio project of another project."""
        t, p = tables.tasks.c, tables.projects.c
        query = (
            sa.select(t.project, t.ls_project_id, t.schema_id, t.schema_version, sa.func.count())
            .select_from(tables.tasks.join(tables.projects, p.ls_project_id == t.ls_project_id))
            .where(p.project != t.project, t.ls_task_id.is_not(None))
            .group_by(t.project, t.ls_project_id, t.schema_id, t.schema_version)
            .order_by(t.project, t.ls_project_id, t.schema_id, t.schema_version)
        )
        with self.engine.connect() as conn:
            return [Misplaced(*row) for row in conn.execute(query).all()]

    def run(self) -> RelocationOutcome:
        """Moves what is misplaced and deletes the old copies; returns the counts."""
        moved = waiting = 0
        try:
            for group in self.misplaced():
                try:
                    schema = self.catalog.get(group.schema_id, group.schema_version)
                except NotFound:
                    waiting += group.tasks
                    log.warning(
                        "tasks wait to be moved: their schema version is unknown",
                        extra={"project": group.project, "schema_id": group.schema_id},
                    )
                    continue
                target = self.projects.ensure(group.project, schema)
                moved += self._move(group, target)
            deleted = self._delete_old_copies()
        except Exception as exc:
            raise unavailable_or_none(exc) or exc from None
        outcome = RelocationOutcome(moved, deleted, waiting)
        if moved or deleted or waiting:
            log.info("relocated tasks", extra=outcome.__dict__)
        return outcome

    def _rows(self, group: Misplaced, *, marked: bool) -> list[sa.Row]:
        t = tables.tasks.c
        query = sa.select(tables.tasks).where(
            t.project == group.project,
            t.ls_project_id == group.ls_project_id,
            t.schema_id == group.schema_id,
            t.schema_version == group.schema_version,
            t.ls_task_id.is_not(None),
            t.moving_to.is_not(None) if marked else t.moving_to.is_(None),
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(t.id).limit(self.chunk_size)).all())

    def _move(self, group: Misplaced, target: int) -> int:
        moved = self._resume(group, target)
        while rows := self._rows(group, marked=False):
            moved += self._move_chunk(rows, group.ls_project_id, target)
        return moved

    def _resume(self, group: Misplaced, target: int) -> int:
        """Marked tasks of an interrupted pass: the copies Label Studio has are recorded, the
        others unmarked (the next chunk sends them)."""
        resumed = 0
        while rows := self._rows(group, marked=True):
            wanted = {(r.batch_id, r.custom_id): r for r in rows}
            found: list[tuple[sa.Row, int]] = []
            for page in task_pages(self.client, target, 1000, fields="task_only"):
                for task in page:
                    data = task.get("data") or {}
                    row = wanted.pop((data.get(BATCH_KEY), data.get(CUSTOM_ID_KEY)), None)
                    if row is not None:
                        found.append((row, int(task["id"])))
            if found:
                self._record(found, group.ls_project_id, target)
                resumed += len(found)
            if wanted:
                with write_transaction(self.engine) as conn:
                    conn.execute(
                        tables.tasks.update()
                        .where(tables.tasks.c.id.in_([r.id for r in wanted.values()]))
                        .values(moving_to=None)
                    )
        return resumed

    def _tasks(self, project_id: int, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Tasks of a project by id, with predictions and annotations in full."""
        found: dict[int, dict[str, Any]] = {}
        for page in task_pages(self.client, project_id, len(task_ids), task_ids=task_ids):
            found.update((int(t["id"]), t) for t in page)
        return found

    def _move_chunk(self, rows: Sequence[sa.Row], source: int, target: int) -> int:
        exported = self._tasks(source, [r.ls_task_id for r in rows])
        recorded = self._recorded_annotations([r.ls_task_id for r in rows])
        payload = [
            _copy(exported[r.ls_task_id])
            if r.ls_task_id in exported
            else _rebuilt(r, recorded.get(r.ls_task_id, []))
            for r in rows
        ]
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.tasks.update()
                .where(tables.tasks.c.id.in_([r.id for r in rows]))
                .values(moving_to=target)
            )
        new_ids = self._send(self.client, target, payload)
        if len(new_ids) != len(rows):
            raise label_studio_unavailable(
                f"Label Studio returned {len(new_ids)} task ids for {len(rows)} tasks"
            )
        self._record(list(zip(rows, new_ids, strict=True)), source, target)
        return len(rows)

    def _recorded_annotations(self, task_ids: Sequence[int]) -> dict[int, list[sa.Row]]:
        a = tables.ls_annotations.c
        found: dict[int, list[sa.Row]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(
                sa.select(tables.ls_annotations)
                .where(a.ls_task_id.in_(list(task_ids)))
                .order_by(a.ls_annotation_id)
            ):
                found.setdefault(int(row.ls_task_id), []).append(row)
        return found

    def _record(self, moved: Sequence[tuple[sa.Row, int]], source: int, target: int) -> None:
        """Records where each task is now, with its annotations' new ids (automatic ones stay
        automatic); lists the old copies for deletion. Then what the copy in Label Studio says
        is recorded over it, so an annotation made or changed in between is not lost."""
        old_ids = [row.ls_task_id for row, _ in moved]
        new_ids = [new for _, new in moved]
        originals = self._tasks(source, old_ids)
        copies = self._tasks(target, new_ids)
        recorded = self._recorded_annotations(old_ids)
        a, t = tables.ls_annotations, tables.tasks
        now = time.time()
        with write_transaction(self.engine) as conn:
            for row, new_id in moved:
                ours = recorded.get(row.ls_task_id, [])
                original = originals.get(row.ls_task_id)
                # The annotations were sent in id order (ours for a rebuilt task), so Label
                # Studio created them in that order: the n-th sent is the n-th new.
                sent = (
                    sorted(int(x["id"]) for x in _annotations_of(original))
                    if original is not None
                    else [int(x.ls_annotation_id) for x in ours]
                )
                new = sorted(
                    int(x["id"]) for x in (copies.get(new_id) or {}).get("annotations") or []
                )
                renamed = dict(zip(sent, new, strict=True)) if len(sent) == len(new) else {}
                conn.execute(a.delete().where(a.c.ls_task_id == row.ls_task_id))
                kept = [x for x in ours if int(x.ls_annotation_id) in renamed]
                if kept:
                    conn.execute(
                        a.insert(),
                        [
                            {
                                **x._asdict(),
                                "ls_annotation_id": renamed[int(x.ls_annotation_id)],
                                "ls_task_id": new_id,
                            }
                            for x in kept
                        ],
                    )
                latest = row.annotation_id
                conn.execute(
                    t.update()
                    .where(t.c.id == row.id)
                    .values(
                        ls_task_id=new_id,
                        ls_project_id=target,
                        moving_to=None,
                        annotation_id=renamed.get(int(latest)) if latest is not None else None,
                    )
                )
                if original is not None:
                    conn.execute(
                        tables.relocations.insert().values(
                            ls_task_id=row.ls_task_id, ls_project_id=source, created_at=now
                        )
                    )
            conn.execute(
                tables.imports.update()
                .where(
                    tables.imports.c.batch_id.in_({row.batch_id for row, _ in moved}),
                    tables.imports.c.project.in_({row.project for row, _ in moved}),
                    tables.imports.c.ls_project_id == source,
                )
                .values(ls_project_id=target)
            )
        self.annotations.replace_tasks(
            {
                new_id: [annotation_record(x, new_id) for x in _annotations_of(copies.get(new_id))]
                for new_id in new_ids
            },
            target,
        )

    def _delete_old_copies(self) -> int:
        r = tables.relocations.c
        deleted = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(r.ls_task_id, r.ls_project_id)
                    .order_by(r.ls_project_id, r.ls_task_id)
                    .limit(500)
                ).all()
            if not rows:
                return deleted
            by_project: dict[int, list[int]] = {}
            for row in rows:
                by_project.setdefault(int(row.ls_project_id), []).append(int(row.ls_task_id))
            for project_id, task_ids in by_project.items():
                delete_tasks(self.client, project_id, task_ids)
                with write_transaction(self.engine) as conn:
                    conn.execute(tables.relocations.delete().where(r.ls_task_id.in_(task_ids)))
                deleted += len(task_ids)


def _copy(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task from an export as an import: its data, predictions and annotations (in id order,
    by the same people)."""
    copy: dict[str, Any] = {"data": task.get("data") or {}}
    predictions = [
        {k: p[k] for k in ("result", "model_version", "score") if p.get(k) is not None}
        for p in task.get("predictions") or []
        if isinstance(p, Mapping) and p.get("result")
    ]
    if predictions:
        copy["predictions"] = predictions
    annotations = sorted(_annotations_of(task), key=lambda x: int(x["id"]))
    if annotations:
        copy["annotations"] = [_annotation(x) for x in annotations]
    return copy


def _annotations_of(task: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """An exported task's annotations (none for a task that is not there)."""
    return [x for x in (task or {}).get("annotations") or [] if isinstance(x, Mapping)]


def _annotation(annotation: Mapping[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = {
        "result": annotation.get("result") or [],
        "was_cancelled": bool(annotation.get("was_cancelled")),
        "ground_truth": bool(annotation.get("ground_truth")),
    }
    if annotation.get("lead_time") is not None:
        copied["lead_time"] = annotation["lead_time"]
    by = annotation.get("completed_by")
    if isinstance(by, Mapping) and by.get("email"):
        copied["completed_by"] = {"email": by["email"]}
    elif isinstance(by, int):
        copied["completed_by"] = by
    return copied


def _rebuilt(row: sa.Row, annotations: Iterable[sa.Row]) -> dict[str, Any]:
    """A task Label Studio lost, from what we recorded of it."""
    copy: dict[str, Any] = {"data": json.loads(row.data_json)}
    recorded = [
        {"result": json.loads(a.result_json), "was_cancelled": bool(a.was_cancelled)}
        for a in annotations
    ]
    if recorded:
        copy["annotations"] = recorded
    return copy
