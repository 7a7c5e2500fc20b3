"""Batch results → Label Studio tasks with predictions: the resumable, exactly-once import.

A finished batch with `metadata.schema_type` is queued (feed.py). An attempt reads its input and
output files, keeps the successful lines (failed requests are not tasks), builds each task's
data and prediction from the schema (predictions.py), and imports them in chunks with
`labelstudio_api.import_tasks`. Exactly-once across crashes:

- before a chunk is sent, its lines are recorded as `pending` (no Label Studio id yet);
- after Label Studio answers, the ids are recorded in the same transaction as the progress;
- an attempt that finds `pending` lines (the previous one died between the two steps) asks
  Label Studio which of them exist (each task's data carries its batch id and custom_id) and
  records those instead of importing them again.

Label Studio down or slow → the import goes back to the queue (import_queue.py) with exponential
backoff; an unknown schema → `failed` with the reason, queued again as soon as the schema appears.
The batch's files are parsed by batch_results.py.

With auto-accept (auto_accept.py) the tasks whose prediction fits are imported with it as an
annotation too, and those annotations (read back by accepted_annotations.py) are recorded in the
transaction that records the task ids (an interrupted attempt finds them again with the tasks it
resolves).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from label_studio_sdk.client import LabelStudio
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import LoomstackError, NotFound

from . import tables
from .accepted_annotations import automatic_annotations
from .annotations import AnnotationRecord, AnnotationStore
from .auto_accept import accepted_annotation, ensure_user
from .batch_results import BatchResults, ResultLine
from .catalog import SchemaCatalog
from .import_queue import ImportQueue, QueuedImport
from .import_states import COMPLETED, FAILED, IMPORTED, PENDING, QUEUED
from .labelstudio_api import import_tasks, label_studio_unavailable, task_pages, unavailable_or_none
from .predictions import TaskImport, build_task
from .projects import ProjectMap
from .task_schema import TaskSchema

log = logging.getLogger(__name__)

# Keys every imported task's data carries, so Label Studio's copy names its origin.
BATCH_KEY = "loomstack_batch_id"
CUSTOM_ID_KEY = "loomstack_custom_id"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Importer:
    """The exactly-once import of a batch's results (synchronous; call it from a thread). Its
    collaborators come in through the constructor: the queue it reports to, how a chunk is sent
    to Label Studio (`send`) and what runs after each chunk is recorded (`after_chunk`; tests
    stop an import between chunks with it)."""

    def __init__(
        self,
        engine: Engine,
        catalog: SchemaCatalog,
        projects: ProjectMap,
        queue: ImportQueue,
        *,
        chunk_size: int = 500,
        send: Callable[[LabelStudio, int, list[dict[str, Any]]], list[int]] = import_tasks,
        after_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.projects = projects
        self.queue = queue
        self.chunk_size = chunk_size
        self._send = send
        self._after_chunk = after_chunk

    @property
    def client(self) -> LabelStudio:
        if self.projects.client is None:
            raise label_studio_unavailable(
                "Label Studio is not configured (set LOOMSTACK_CURATION_LABEL_STUDIO_URL)"
            )
        return self.projects.client

    # ---- one attempt -----------------------------------------------------------------------

    def attempt(self, item: QueuedImport, read: Callable[[QueuedImport], BatchResults]) -> str:
        """One import attempt; returns the import's status after it. `read` fetches the
        batch's results (it may raise LoomstackError, e.g. Unavailable)."""
        self.queue.start_attempt(item.batch_id)
        try:
            schema = self.catalog.resolve(item.schema_type)
        except NotFound as exc:
            self.queue.fail(item.batch_id, exc)
            log.warning("import failed", extra={"batch_id": item.batch_id, "error": exc.message})
            return FAILED
        try:
            results = read(item)
            self.import_results(
                item.batch_id,
                item.project,
                schema,
                results,
                model=item.model,
                auto_accept=item.auto_accept,
            )
        except Exception as exc:
            retryable = unavailable_or_none(exc)
            if retryable is None:
                log.exception("import failed", extra={"batch_id": item.batch_id})
                message = exc.message if isinstance(exc, LoomstackError) else f"{exc}"
                self.queue.retry_much_later(item.batch_id, message)
                return QUEUED
            delay = self.queue.retry_later(item.batch_id, retryable.message)
            log.warning(
                "import will be retried",
                extra={"batch_id": item.batch_id, "error": retryable.message, "delay": delay},
            )
            return QUEUED
        return COMPLETED

    def import_results(
        self,
        batch_id: str,
        project: str,
        schema: TaskSchema,
        results: BatchResults,
        *,
        model: str = "",
        auto_accept: bool = False,
    ) -> int:
        """Imports a batch's result lines that are not tasks yet; returns the task count.
        With `auto_accept`, each task whose prediction fits is annotated with it too.

        Safe to call again after any crash: lines are never imported twice.
        """
        ls_project = self.projects.ensure(project, schema)
        # The Label Studio user the automatic annotations belong to.
        annotator = ensure_user(self.client) if auto_accept else None
        self.queue.update(
            batch_id,
            ls_project_id=ls_project,
            result_lines=len(results.lines),
            skipped_lines=tables.imports.c.failed_lines + results.skipped,
        )
        self._resolve_pending(batch_id, annotator)
        with self.engine.connect() as conn:
            done = set(
                conn.execute(
                    sa.select(tables.tasks.c.custom_id).where(tables.tasks.c.batch_id == batch_id)
                ).scalars()
            )
        seen: set[str] = set()
        todo = []
        for line in results.lines:
            if line.custom_id not in done and line.custom_id not in seen:
                seen.add(line.custom_id)
                todo.append(line)
        problems = 0
        chunks = list(_chunks(todo, self.chunk_size))

        # The next chunk is built and recorded as pending while Label Studio imports the
        # current one (a crash leaves it pending, which the next attempt resolves).
        def prepare(index: int) -> Future[list[TaskImport]] | None:
            if index >= len(chunks):
                return None
            return builder.submit(
                self._prepare,
                batch_id,
                project,
                schema,
                ls_project,
                chunks[index],
                model,
                annotator is not None,
            )

        with ThreadPoolExecutor(1, thread_name_prefix="prepare-tasks") as builder:
            upcoming = prepare(0)
            for index, chunk in enumerate(chunks):
                assert upcoming is not None
                built = upcoming.result()
                upcoming = prepare(index + 1)
                problems += self._import_chunk(batch_id, ls_project, chunk, built, annotator)
                if self._after_chunk is not None:
                    self._after_chunk(len(chunk))
        with write_transaction(self.engine) as conn:
            count = conn.execute(
                sa.select(sa.func.count()).where(tables.tasks.c.batch_id == batch_id)
            ).scalar_one()
            accepted = conn.execute(
                sa.select(sa.func.count()).where(
                    tables.tasks.c.batch_id == batch_id, tables.tasks.c.auto_accepted.is_(True)
                )
            ).scalar_one()
            conn.execute(
                tables.imports.update()
                .where(tables.imports.c.batch_id == batch_id)
                .values(
                    status=COMPLETED,
                    error="",
                    error_code="",
                    imported_tasks=count,
                    auto_accepted_tasks=accepted,
                    prediction_problems=tables.imports.c.prediction_problems + problems,
                    updated_at=time.time(),
                )
            )
        log.info(
            "batch imported",
            extra={"batch_id": batch_id, "tasks": count, "auto_accepted": accepted},
        )
        return int(count)

    def _prepare(
        self,
        batch_id: str,
        project: str,
        schema: TaskSchema,
        ls_project: int,
        chunk: Sequence[ResultLine],
        model: str,
        accept: bool = False,
    ) -> list[TaskImport]:
        """A chunk's tasks, built and recorded as pending: ready to send."""
        built = self._build(batch_id, schema, chunk, model, accept)
        self._record_pending(batch_id, project, schema, ls_project, chunk, built)
        return built

    def _build(
        self,
        batch_id: str,
        schema: TaskSchema,
        chunk: Sequence[ResultLine],
        model: str,
        accept: bool = False,
    ) -> list[TaskImport]:
        """The Label Studio tasks (data + prediction) of a chunk of result lines; with
        `accept`, a task whose whole answer fit carries it as an annotation as well."""
        built = []
        for line in chunk:
            task = build_task(
                schema,
                line.data,
                answer=line.answer,
                prompt=line.prompt,
                model_version=model or "loomstack",
            )
            task.task["data"][BATCH_KEY] = batch_id
            task.task["data"][CUSTOM_ID_KEY] = line.custom_id
            if accept and task.ok and task.task.get("predictions"):
                task.task["annotations"] = [accepted_annotation(task.task["predictions"][0])]
            built.append(task)
        return built

    def _record_pending(
        self,
        batch_id: str,
        project: str,
        schema: TaskSchema,
        ls_project: int,
        chunk: Sequence[ResultLine],
        built: list[TaskImport],
    ) -> None:
        """Records a chunk's lines as on their way to Label Studio (before they are sent)."""
        now = time.time()
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.tasks.insert(),
                [
                    {
                        "project": project,
                        "batch_id": batch_id,
                        "custom_id": line.custom_id,
                        "schema_id": schema.id,
                        "schema_version": schema.version,
                        "ls_project_id": ls_project,
                        "ls_task_id": None,
                        "status": PENDING,
                        "data_json": json.dumps(task.task["data"], ensure_ascii=False),
                        "predicted_json": json.dumps(_predicted(task.task), ensure_ascii=False),
                        "created_at": now,
                    }
                    for line, task in zip(chunk, built, strict=True)
                ],
            )

    def _import_chunk(
        self,
        batch_id: str,
        ls_project: int,
        chunk: Sequence[ResultLine],
        built: list[TaskImport],
        annotator: int | None,
    ) -> int:
        problems = sum(bool(task.problems) for task in built)
        try:
            task_ids = self._send(self.client, ls_project, [t.task for t in built])
        except Exception as exc:
            # Nothing reached Label Studio, or we cannot tell: the next attempt resolves it.
            raise unavailable_or_none(exc) or exc from None
        if len(task_ids) != len(chunk):
            raise label_studio_unavailable(
                f"Label Studio returned {len(task_ids)} task ids for {len(chunk)} tasks"
            )
        accepted = [
            int(task_id)
            for task_id, task in zip(task_ids, built, strict=True)
            if task.task.get("annotations")
        ]
        automatic = (
            automatic_annotations(self.client, ls_project, accepted, annotator)
            if annotator is not None and accepted
            else []
        )
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.tasks.update()
                .where(
                    tables.tasks.c.batch_id == batch_id,
                    tables.tasks.c.custom_id == sa.bindparam("cid"),
                )
                .values(ls_task_id=sa.bindparam("tid"), status=IMPORTED),
                [
                    {"cid": line.custom_id, "tid": int(task_id)}
                    for line, task_id in zip(chunk, task_ids, strict=True)
                ],
            )
            if automatic:
                self._annotations().record_automatic(conn, automatic)
            conn.execute(
                tables.imports.update()
                .where(tables.imports.c.batch_id == batch_id)
                .values(
                    imported_tasks=tables.imports.c.imported_tasks + len(chunk),
                    updated_at=time.time(),
                )
            )
        return problems

    def _annotations(self) -> AnnotationStore:
        return AnnotationStore(self.engine, self.catalog)

    def _resolve_pending(self, batch_id: str, annotator: int | None) -> None:
        """Lines recorded as pending by an interrupted attempt: the ones Label Studio has (in
        the project they were sent to) get their ids, the rest are forgotten (and imported
        again by this attempt)."""
        c = tables.tasks.c
        with self.engine.connect() as conn:
            pending: dict[int, set[str]] = {}
            for row in conn.execute(
                sa.select(c.custom_id, c.ls_project_id).where(
                    c.batch_id == batch_id, c.ls_task_id.is_(None)
                )
            ):
                pending.setdefault(int(row.ls_project_id), set()).add(row.custom_id)
        if not pending:
            return
        found: dict[str, int] = {}
        automatic: list[AnnotationRecord] = []
        try:
            for ls_project, custom_ids in pending.items():
                in_project: dict[str, int] = {}
                for tasks in task_pages(self.client, ls_project, 1000, fields="task_only"):
                    for task in tasks:
                        data = task.get("data") or {}
                        custom_id = data.get(CUSTOM_ID_KEY)
                        if data.get(BATCH_KEY) == batch_id and custom_id in custom_ids:
                            in_project[str(custom_id)] = int(task["id"])
                if annotator is not None and in_project:
                    automatic += automatic_annotations(
                        self.client, ls_project, list(in_project.values()), annotator
                    )
                found.update(in_project)
        except Exception as exc:
            raise unavailable_or_none(exc) or exc from None
        with write_transaction(self.engine) as conn:
            if found:
                conn.execute(
                    tables.tasks.update()
                    .where(c.batch_id == batch_id, c.custom_id == sa.bindparam("cid"))
                    .values(ls_task_id=sa.bindparam("tid"), status=IMPORTED),
                    [{"cid": cid, "tid": tid} for cid, tid in found.items()],
                )
            if automatic:
                self._annotations().record_automatic(conn, automatic)
            conn.execute(
                tables.tasks.delete().where(c.batch_id == batch_id, c.ls_task_id.is_(None))
            )
        log.info(
            "resolved an interrupted import",
            extra={
                "batch_id": batch_id,
                "pending": sum(len(v) for v in pending.values()),
                "found": len(found),
            },
        )


def _predicted(task: dict[str, Any]) -> dict[str, Any]:
    """The prediction's values by control name (to tell corrections from acceptances)."""
    predictions = task.get("predictions") or []
    if not predictions:
        return {}
    return {r["from_name"]: r["value"] for r in predictions[0]["result"]}
