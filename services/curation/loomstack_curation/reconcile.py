"""The periodic reconcile: every task of every mapped project, page by page, with its
annotations, so what a missed webhook would have told us is recorded anyway."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from label_studio_sdk.client import LabelStudio

from .annotations import AnnotationStore, annotation_record
from .projects import ProjectMap, task_payload, unavailable_or_none

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileOutcome:
    """Counts of one pass."""

    projects: int
    tasks: int
    annotations: int


def reconcile(
    client: LabelStudio, projects: ProjectMap, store: AnnotationStore, page_size: int = 500
) -> ReconcileOutcome:
    """Reads every page of every mapped project (`tasks.list(fields="all")`)."""
    seen_projects = seen_tasks = seen_annotations = 0
    try:
        for _schema_id, _version, project_id in projects.all():
            seen_projects += 1
            task: Any
            for task in client.tasks.list(project=project_id, fields="all", page_size=page_size):
                body = task_payload(task)
                task_id = int(body["id"])
                records = [annotation_record(a, task_id) for a in body.get("annotations") or []]
                if store.replace_task(task_id, records):
                    seen_tasks += 1
                    seen_annotations += len(records)
    except Exception as exc:
        raise unavailable_or_none(exc) or exc from None
    outcome = ReconcileOutcome(seen_projects, seen_tasks, seen_annotations)
    log.info("reconciled", extra=outcome.__dict__)
    return outcome
