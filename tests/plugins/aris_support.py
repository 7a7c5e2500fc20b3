"""Helpers of the Aris plugin tests: a stand-in for the curation service's plugin context,
batch and curation feed events in the host's wire format, and the batch lines they name.

The real host (curation's plugin runner) is tested with the curation service; here the
context is `CurationContextStandIn`, which keeps Label Studio tasks, files and the import queue
in memory, records every call, and publishes the curation feed event a gold star set through
it produces (origin `plugin:aris`), as curation does.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from curation_support import input_line, output_line

from loomstack_aris.plugin import plugin
from loomstack_kit.errors import NotFound, Unavailable
from loomstack_kit.plugins import GOLD_REMOVED, GOLD_SET, FeedEvent, TaskRef

CREATED, COMPLETED = "batch.created", "batch.completed"
_sequence = itertools.count(1)


def batch_event(
    type: str,
    project: str,
    batch_id: str,
    metadata: Mapping[str, str],
    *,
    input_file_id: str = "",
    output_file_id: str = "",
    failed_lines: int = 0,
) -> FeedEvent:
    """A batches feed event as the host hands it to a handler."""
    return FeedEvent(
        feed="batches",
        sequence=next(_sequence),
        type=type,
        project=project,
        data={
            "batch_id": batch_id,
            "model": "SmolLM2-135M-Instruct",
            "input_file_id": input_file_id or f"file-in-{batch_id}",
            "output_file_id": output_file_id,
            "failed_lines": failed_lines,
            "metadata": dict(metadata),
        },
        created_at=1_800_000_000.0,
    )


def gold_event(
    project: str,
    batch_id: str,
    ls_task_id: int,
    *,
    gold: bool = True,
    origin: str = "label_studio",
    ls_annotation_id: int | None = 900,
    schema_id: str = "aris.candidate",
) -> FeedEvent:
    """A curation feed gold-star event."""
    return FeedEvent(
        feed="curation",
        sequence=next(_sequence),
        type=GOLD_SET if gold else GOLD_REMOVED,
        project=project,
        data={
            "ls_task_id": ls_task_id,
            "batch_id": batch_id,
            "custom_id": f"c{ls_task_id}",
            "schema_id": schema_id,
            "schema_version": 1,
            "gold": gold,
            "ls_annotation_id": ls_annotation_id,
            "origin": origin,
        },
        created_at=1_800_000_100.0,
    )


def candidate_answer(recommendation: str = "Strong Yes") -> str:
    return (
        "Here is my assessment.\n```json\n"
        f'{{"recommendation": "{recommendation}", "trajectory": "Strong", '
        '"company_pedigree": "Average", "education_pedigree": "Exceptional"}\n```'
    )


class CurationContextStandIn:
    """A stand-in for curation's CurationContext: the plugin's real migrated database, and
    in-memory Label Studio tasks, files and import queue."""

    plugin = "aris"

    def __init__(self, database: Any, home: Path) -> None:
        self.database = database
        self.home = home
        self.files: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.tasks: dict[tuple[str, str], list[TaskRef]] = {}
        self.queued: dict[str, str] = {}  # batch id → schema type
        self.queue_calls: list[tuple[str, str]] = []
        self.set_gold_calls: list[tuple[str, list[int], bool]] = []
        self.set_gold_error: Exception | None = None
        self.published: list[FeedEvent] = []  # the curation feed events set_gold produced

    # ---- what a test sets up ------------------------------------------------------------------

    def add_file(self, project: str, file_id: str, lines: list[dict[str, Any]]) -> str:
        self.files[(project, file_id)] = lines
        return file_id

    def add_batch(
        self,
        project: str,
        batch_id: str,
        answers: list[str | None],
        *,
        prompt: str = "Candidate: Ada Lovelace, 10 years of analytical engines",
    ) -> tuple[str, str]:
        """Input and output files of a batch (None answer = a failed line)."""
        inputs = [input_line(f"{batch_id}-{i}", f"{prompt} #{i}") for i in range(len(answers))]
        outputs = [output_line(f"{batch_id}-{i}", a) for i, a in enumerate(answers)]
        return (
            self.add_file(project, f"file-in-{batch_id}", inputs),
            self.add_file(project, f"file-out-{batch_id}", outputs),
        )

    def import_tasks(self, project: str, batch_id: str, ls_task_ids: list[int]) -> None:
        """What curation's import would have created in Label Studio."""
        self.tasks[(project, batch_id)] = [
            TaskRef(
                ls_task_id=t,
                ls_project_id=7,
                project=project,
                batch_id=batch_id,
                custom_id=f"{batch_id}-{i}",
                schema_id="aris.candidate",
                schema_version=1,
                status="imported",
                gold=False,
                rating=None,
                ls_annotation_id=None,
                answers={},
                data={},
            )
            for i, t in enumerate(ls_task_ids)
        ]

    # ---- the CurationContext protocol ---------------------------------------------------------

    def queue_import(self, event: FeedEvent, schema_type: str) -> bool:
        batch_id = str(event.data["batch_id"])
        self.queue_calls.append((batch_id, schema_type))
        if batch_id in self.queued:
            return False
        self.queued[batch_id] = schema_type
        return True

    def tasks_of_batch(self, project: str, batch_id: str) -> list[TaskRef]:
        return list(self.tasks.get((project, batch_id), []))

    def task(self, project: str, ls_task_id: int) -> TaskRef:
        for (p, _), refs in self.tasks.items():
            for ref in refs:
                if p == project and ref.ls_task_id == ls_task_id:
                    return ref
        raise NotFound(f"no task {ls_task_id}", param="task_id")

    def set_gold(self, project: str, ls_task_ids: list[int], gold: bool) -> list[TaskRef]:
        self.set_gold_calls.append((project, list(ls_task_ids), gold))
        if self.set_gold_error is not None:
            raise self.set_gold_error
        changed = []
        for key, refs in self.tasks.items():
            if key[0] != project:
                continue
            for index, ref in enumerate(refs):
                if ref.ls_task_id in ls_task_ids:
                    refs[index] = dataclasses.replace(ref, gold=gold)
                    changed.append(refs[index])
                    self.published.append(
                        gold_event(
                            project, ref.batch_id, ref.ls_task_id, gold=gold, origin="plugin:aris"
                        )
                    )
        return changed

    def file_lines(self, project: str, file_id: str) -> Iterator[Mapping[str, Any]]:
        if (project, file_id) not in self.files:
            raise NotFound(f"no file {file_id!r}", param="file_id")
        yield from self.files[(project, file_id)]


LABEL_STUDIO_DOWN = Unavailable("Label Studio is not reachable")


def meta(cid: str, type: str = "CANDIDATE", **extra: str) -> dict[str, str]:
    return {"conquest_id": cid, "conquest_type": type, **extra}


def deliver(event: FeedEvent, host: CurationContextStandIn) -> None:
    """What the host does with one event: every handler of its feed and type, by priority."""
    for handler in sorted(plugin.result_handlers, key=lambda h: h.priority):
        if handler.feed == event.feed and (not handler.events or event.type in handler.events):
            handler.handle(event, host)


def run_batch(
    host: CurationContextStandIn,
    cid: str,
    batch_id: str,
    answers: list[str | None],
    project: str = "p1",
    **metadata: str,
) -> None:
    """A conquest's batch from creation to completion, through every handler."""
    _, output = host.add_batch(project, batch_id, answers)
    deliver(batch_event(CREATED, project, batch_id, meta(cid, **metadata)), host)
    completed = batch_event(
        COMPLETED,
        project,
        batch_id,
        meta(cid, **metadata),
        output_file_id=output,
        failed_lines=sum(a is None for a in answers),
    )
    deliver(completed, host)
