"""Batch results → Label Studio tasks with predictions: the import queue and the resumable import.

A finished batch with `metadata.schema_type` is queued (feed.py). An attempt reads its input and
output files, keeps the successful lines (failed requests are not tasks), builds each task's
data and prediction from the schema (predictions.py), and imports them in chunks with
`projects.import_tasks`. Exactly-once across crashes:

- before a chunk is sent, its lines are recorded as `pending` (no Label Studio id yet);
- after Label Studio answers, the ids are recorded in the same transaction as the progress;
- an attempt that finds `pending` lines (the previous one died between the two steps) asks
  Label Studio which of them exist (each task's data carries its batch id and custom_id) and
  records those instead of importing them again.

Label Studio down or slow → the import goes back to the queue with exponential backoff; an
unknown schema → `failed` with the reason, queued again as soon as the schema appears (failed
imports wait outside the queue, so any number of them never delays a new import).

With auto-accept (auto_accept.py) the tasks whose prediction fits are imported with it as an
annotation too, and those annotations are recorded in the transaction that records the task
ids (an interrupted attempt finds them again with the tasks it resolves).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from label_studio_sdk.client import LabelStudio
from sqlalchemy.engine import Engine

from loomstack_kit.batch_output import read_output
from loomstack_kit.database import write_transaction
from loomstack_kit.errors import LoomstackError, NotFound

from . import tables
from .annotations import AnnotationRecord, AnnotationStore, annotation_record
from .auto_accept import accepted_annotation, ensure_user, is_automatic
from .catalog import SchemaCatalog
from .import_states import COMPLETED, FAILED, IMPORTED, PENDING, QUEUED, RUNNING
from .predictions import TaskImport, build_task
from .projects import (
    ProjectMap,
    export_annotated,
    import_tasks,
    label_studio_unavailable,
    task_pages,
    unavailable_or_none,
)
from .task_schema import TaskSchema

log = logging.getLogger(__name__)

# Keys every imported task's data carries, so Label Studio's copy names its origin.
BATCH_KEY = "loomstack_batch_id"
CUSTOM_ID_KEY = "loomstack_custom_id"


@dataclass(frozen=True)
class ResultLine:
    """One successful batch result: the request's prompt and data, and the model's answer."""

    custom_id: str
    prompt: str
    answer: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResults:
    """The importable lines of a batch and how many result lines were left out."""

    lines: list[ResultLine]
    skipped: int


@dataclass(frozen=True)
class QueuedImport:
    """A due import: what the worker needs to fetch the batch's files."""

    batch_id: str
    project: str
    schema_type: str
    model: str
    input_file_id: str
    output_file_id: str
    auto_accept: bool = False


def _prompt_of(body: dict[str, Any]) -> str:
    """The last user message's text (content parts joined)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def read_results(input_lines: Iterable[bytes], output_lines: Iterable[bytes]) -> BatchResults:
    """Joins a batch's input (prompts, task data in `body.metadata`) with its output lines.

    Only lines with a 200 response and no error are importable; every other output line counts
    as skipped.
    """
    requests: dict[str, dict[str, Any]] = {}
    for raw in input_lines:
        if raw.strip():
            line = orjson.loads(raw)
            requests[str(line.get("custom_id"))] = line.get("body") or {}
    lines: list[ResultLine] = []
    skipped = 0
    for out in read_output(output_lines):
        if not out.ok:
            skipped += 1
            continue
        request = requests.get(out.custom_id, {})
        metadata = request.get("metadata")
        lines.append(
            ResultLine(
                custom_id=out.custom_id,
                prompt=_prompt_of(request),
                answer=out.answer,
                data=dict(metadata) if isinstance(metadata, dict) else {},
            )
        )
    return BatchResults(lines, skipped)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Importer:
    """The import queue and the import itself (synchronous; call it from a thread)."""

    def __init__(
        self,
        engine: Engine,
        catalog: SchemaCatalog,
        projects: ProjectMap,
        *,
        chunk_size: int = 500,
        retry_base: float = 2.0,
        retry_max: float = 300.0,
        allow_auto_accept: bool = True,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.projects = projects
        self.allow_auto_accept = allow_auto_accept
        self.chunk_size = chunk_size
        self.retry_base = retry_base
        self.retry_max = retry_max
        # Called after each chunk is recorded (tests stop an import between chunks with it).
        self.after_chunk: Callable[[int], None] | None = None
        # Sends a chunk to Label Studio, returns the new task ids in order.
        self.send: Callable[[LabelStudio, int, list[dict[str, Any]]], list[int]] = import_tasks
        # The catalog generation `revive` last looked at (None: not since this process started).
        self._revived_generation: int | None = None

    @property
    def client(self) -> LabelStudio:
        if self.projects.client is None:
            raise label_studio_unavailable(
                "Label Studio is not configured (set LOOMSTACK_CURATION_LABEL_STUDIO_URL)"
            )
        return self.projects.client

    # ---- the queue -------------------------------------------------------------------------

    def enqueue(
        self,
        conn: sa.Connection,
        *,
        batch_id: str,
        project: str,
        schema_type: str,
        model: str,
        input_file_id: str,
        output_file_id: str,
        failed_lines: int = 0,
        auto_accept: bool = False,
    ) -> bool:
        """Queues a batch once (a repeated event changes nothing); True if it was new."""
        exists = conn.execute(
            sa.select(tables.imports.c.batch_id).where(tables.imports.c.batch_id == batch_id)
        ).first()
        if exists:
            return False
        if auto_accept and not self.allow_auto_accept:
            log.warning(
                "auto-accept is not allowed here: the batch's tasks wait for people",
                extra={"batch_id": batch_id},
            )
            auto_accept = False
        now = time.time()
        conn.execute(
            tables.imports.insert().values(
                batch_id=batch_id,
                project=project,
                schema_type=schema_type,
                model=model,
                input_file_id=input_file_id,
                output_file_id=output_file_id,
                failed_lines=failed_lines,
                skipped_lines=failed_lines,
                auto_accept=auto_accept,
                status=QUEUED,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        return True

    def due(self, now: float | None = None, limit: int = 10) -> list[QueuedImport]:
        """Imports whose attempt is due, oldest first: queued ones past their time and
        interrupted ones.

        A failed import (unknown schema) is never among them, however many pile up: it waits
        outside the queue and goes back into it when the catalog can resolve its schema
        (`revive`), so it can never take the place of a new import in the page.
        """
        now = time.time() if now is None else now
        if self._revived_generation != self.catalog.generation:
            self.revive(now)
        c = tables.imports.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tables.imports)
                .where(c.status.in_((QUEUED, RUNNING)), c.next_attempt_at <= now)
                .order_by(c.next_attempt_at, c.batch_id)
                .limit(limit)
            ).all()
        return [
            QueuedImport(
                row.batch_id,
                row.project,
                row.schema_type,
                row.model,
                row.input_file_id,
                row.output_file_id,
                bool(row.auto_accept),
            )
            for row in rows
        ]

    def revive(self, now: float | None = None) -> int:
        """Queues again the imports that failed for an unknown schema the catalog knows now;
        returns how many. `due` calls it once per catalog change (not per poll): the distinct
        schema types of the failed imports are looked at, not each of them."""
        now = time.time() if now is None else now
        generation = self.catalog.generation
        c = tables.imports.c
        waiting = (c.status == FAILED, c.error_code == "unknown_schema")
        with self.engine.connect() as conn:
            schema_types = list(
                conn.execute(sa.select(c.schema_type).where(*waiting).distinct()).scalars()
            )
        known = []
        for schema_type in schema_types:
            try:
                self.catalog.resolve(schema_type)
            except NotFound:
                continue
            known.append(schema_type)
        revived = 0
        for start in range(0, len(known), 500):
            with write_transaction(self.engine) as conn:
                revived += (
                    conn.execute(
                        tables.imports.update()
                        .where(*waiting, c.schema_type.in_(known[start : start + 500]))
                        .values(status=QUEUED, next_attempt_at=now, updated_at=now)
                    ).rowcount
                    or 0
                )
        self._revived_generation = generation
        if revived:
            log.info("imports queued again: their schema is known now", extra={"count": revived})
        return revived

    def _update(self, batch_id: str, **values: Any) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.imports.update()
                .where(tables.imports.c.batch_id == batch_id)
                .values(updated_at=time.time(), **values)
            )

    def retry_later(self, batch_id: str, error: str) -> float:
        """Records a retryable failure; returns the delay before the next attempt."""
        with self.engine.connect() as conn:
            attempts = conn.execute(
                sa.select(tables.imports.c.attempts).where(tables.imports.c.batch_id == batch_id)
            ).scalar_one()
        delay = min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1))
        self._update(
            batch_id,
            status=QUEUED,
            error=error,
            error_code="unavailable",
            next_attempt_at=time.time() + delay,
        )
        return delay

    def fail(self, batch_id: str, error: LoomstackError) -> None:
        """Records a failure that waits for its cause to go away (no timed retry)."""
        self._update(batch_id, status=FAILED, error=error.message, error_code=error.code)

    # ---- one attempt -----------------------------------------------------------------------

    def attempt(self, item: QueuedImport, read: Callable[[QueuedImport], BatchResults]) -> str:
        """One import attempt; returns the import's status after it. `read` fetches the
        batch's results (it may raise LoomstackError, e.g. Unavailable)."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.imports.update()
                .where(tables.imports.c.batch_id == item.batch_id)
                .values(
                    status=RUNNING,
                    attempts=tables.imports.c.attempts + 1,
                    updated_at=time.time(),
                )
            )
        try:
            schema = self.catalog.resolve(item.schema_type)
        except NotFound as exc:
            self.fail(item.batch_id, exc)
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
                self._update(
                    item.batch_id,
                    status=QUEUED,
                    error=message,
                    error_code="error",
                    next_attempt_at=time.time() + self.retry_max,
                )
                return QUEUED
            delay = self.retry_later(item.batch_id, retryable.message)
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
        self._update(
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
                if self.after_chunk is not None:
                    self.after_chunk(len(chunk))
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
            task_ids = self.send(self.client, ls_project, [t.task for t in built])
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
            self._automatic_annotations(ls_project, accepted, annotator)
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

    def _automatic_annotations(
        self, ls_project: int, task_ids: Sequence[int], annotator: int
    ) -> list[AnnotationRecord]:
        """The auto-accept user's annotations of these tasks, as Label Studio has them."""
        records = []
        try:
            for start in range(0, len(task_ids), 200):
                exported = export_annotated(self.client, ls_project, task_ids[start : start + 200])
                for task in exported:
                    for annotation in task.get("annotations") or []:
                        if is_automatic(annotation, annotator):
                            records.append(annotation_record(annotation, int(task["id"])))
        except Exception as exc:
            raise unavailable_or_none(exc) or exc from None
        return records

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
                    automatic += self._automatic_annotations(
                        ls_project, list(in_project.values()), annotator
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


def list_imports(
    engine: Engine, project: str | None, limit: int = 100, offset: int = 0
) -> list[sa.Row]:
    """Imports, newest first."""
    query = sa.select(tables.imports)
    if project is not None:
        query = query.where(tables.imports.c.project == project)
    query = query.order_by(tables.imports.c.created_at.desc(), tables.imports.c.batch_id)
    with engine.connect() as conn:
        return list(conn.execute(query.limit(limit).offset(offset)).all())


def get_import(engine: Engine, project: str | None, batch_id: str) -> sa.Row:
    """One batch's import; NotFound if the batch was never queued."""
    query = sa.select(tables.imports).where(tables.imports.c.batch_id == batch_id)
    if project is not None:
        query = query.where(tables.imports.c.project == project)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        raise NotFound(
            f"no import for batch {batch_id!r} (only completed batches with "
            "metadata.schema_type are imported)",
            param="batch_id",
        )
    return row
