"""What a plugin may do inside the curation service: the kit's `CurationContext`, implemented
with curation's own modules (the import queue, the task queries, the inference client).

A plugin never reads curation's tables: it asks through these verbs, each acting for the
project it names. The gold stars it sets travel through the curation feed with origin
`plugin:<name>`, so its own handlers can recognise them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.plugins import FeedEvent, TaskRef

from .catalog import SchemaCatalog
from .examples import read_answers
from .import_queue import ImportQueue
from .inference_client import InferenceClient
from .tasks import TaskFilter, TaskQueries, TaskView

# The most tasks one batch's lookup returns (a plugin asks for one batch's tasks: a page is enough).
MAX_BATCH_TASKS = 1000


class PluginContext:
    """One plugin's view of the curation service."""

    def __init__(
        self,
        plugin: str,
        home: Path,
        database: Engine | None,
        *,
        db: Engine,
        queue: ImportQueue,
        queries: TaskQueries,
        catalog: SchemaCatalog,
        inference: InferenceClient,
    ) -> None:
        self.plugin = plugin
        self.home = home
        self.database = database
        self._db = db
        self._queue = queue
        self._queries = queries
        self._catalog = catalog
        self._inference = inference

    @property
    def origin(self) -> str:
        """How the curation feed names this plugin's changes."""
        return f"plugin:{self.plugin}"

    def queue_import(self, event: FeedEvent, schema_type: str) -> bool:
        """Queues a completed batch's results for import with this schema (once per batch)."""
        data = event.data
        with write_transaction(self._db) as conn:
            return self._queue.enqueue(
                conn,
                batch_id=str(data["batch_id"]),
                project=event.project,
                schema_type=schema_type,
                model=str(data.get("model", "")),
                input_file_id=str(data.get("input_file_id", "")),
                output_file_id=str(data.get("output_file_id", "")),
                failed_lines=int(data.get("failed_lines", 0) or 0),
            )

    def tasks_of_batch(self, project: str, batch_id: str) -> list[TaskRef]:
        """The imported tasks of a batch, oldest first."""
        views = self._queries.list_tasks(
            project, TaskFilter(batch_id=batch_id), limit=MAX_BATCH_TASKS
        )
        return [self._ref(v) for v in reversed(views)]

    def task(self, project: str, ls_task_id: int) -> TaskRef:
        """One task of the project; NotFound otherwise."""
        return self._ref(self._queries.get_many(project, [ls_task_id])[0])

    def set_gold(self, project: str, ls_task_ids: list[int], gold: bool) -> list[TaskRef]:
        """Gives or takes the gold star in Label Studio, as this plugin."""
        views = self._queries.set_gold(project, ls_task_ids, gold, origin=self.origin)
        return [self._ref(v) for v in views]

    def file_lines(self, project: str, file_id: str) -> Iterator[Mapping[str, Any]]:
        """A JSONL file of the project, line by line."""
        for line in self._inference.read_lines(project, file_id):
            yield json.loads(line)

    def _ref(self, view: TaskView) -> TaskRef:
        answers: dict[str, Any] = {}
        if view.result_json:
            try:
                schema = self._catalog.get(view.schema_id, view.schema_version)
                answers = read_answers(schema, json.loads(view.result_json))[0]
            except Exception:  # a schema gone since: the answers are unknown, not an error
                answers = {}
        return TaskRef(
            ls_task_id=int(view.ls_task_id or 0),
            ls_project_id=view.ls_project_id,
            project=view.project,
            batch_id=view.batch_id,
            custom_id=view.custom_id,
            schema_id=view.schema_id,
            schema_version=view.schema_version,
            status=view.status,
            gold=view.gold,
            rating=view.rating,
            ls_annotation_id=view.annotation_id,
            answers=answers,
            data=json.loads(view.data_json),
        )
