"""The periodic reconcile: every annotated task of every mapped project with its annotations
(Label Studio's export), so what a missed webhook would have told us is recorded anyway, and
a task whose annotations were all deleted there loses them here too. A Label Studio project's
export only ever changes the tasks we recorded in that project."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from label_studio_sdk.client import LabelStudio

from .annotations import AnnotationStore, annotation_record
from .labelstudio_api import export_annotated, unavailable_or_none
from .projects import ProjectMap

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
    """One pass over every mapped project; writes in pages of `page_size` tasks."""
    seen_projects = seen_tasks = seen_annotations = 0
    try:
        for mapped in projects.all():
            project_id = mapped.ls_project_id
            seen_projects += 1
            exported = export_annotated(client, project_id)
            for start in range(0, len(exported), page_size):
                page = {
                    int(t["id"]): [
                        annotation_record(a, int(t["id"])) for a in t.get("annotations") or []
                    ]
                    for t in exported[start : start + page_size]
                }
                ours = store.replace_tasks(page, project_id)
                seen_tasks += len(ours)
                seen_annotations += sum(len(page[i]) for i in ours)
            # Annotated here, absent from the export: every annotation was deleted there.
            present = {int(t["id"]) for t in exported}
            emptied = [i for i in store.annotated_task_ids(project_id) if i not in present]
            for start in range(0, len(emptied), page_size):
                store.replace_tasks({i: [] for i in emptied[start : start + page_size]}, project_id)
    except Exception as exc:
        raise unavailable_or_none(exc) or exc from None
    outcome = ReconcileOutcome(seen_projects, seen_tasks, seen_annotations)
    log.info("reconciled", extra=outcome.__dict__)
    return outcome
