"""The annotations auto-accept made, read back from Label Studio so the import can record them
with the tasks they belong to (importer.py)."""

from __future__ import annotations

from collections.abc import Sequence

from label_studio_sdk.client import LabelStudio

from .annotations import AnnotationRecord, annotation_record
from .auto_accept import is_automatic
from .labelstudio_api import export_annotated, unavailable_or_none


def automatic_annotations(
    client: LabelStudio, ls_project: int, task_ids: Sequence[int], annotator: int
) -> list[AnnotationRecord]:
    """The auto-accept user's annotations of these tasks, as Label Studio has them."""
    records = []
    try:
        for start in range(0, len(task_ids), 200):
            exported = export_annotated(client, ls_project, task_ids[start : start + 200])
            for task in exported:
                for annotation in task.get("annotations") or []:
                    if is_automatic(annotation, annotator):
                        records.append(annotation_record(annotation, int(task["id"])))
    except Exception as exc:
        raise unavailable_or_none(exc) or exc from None
    return records
