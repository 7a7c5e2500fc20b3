"""The states of an import in the queue and of an imported task: one place for every module
that reads or changes them (the importer, annotations, snapshots, lost Label Studio projects).

An import: `queued → running → completed`, or `failed` while its schema is unknown.
A task: `pending` (on its way to Label Studio) → `imported` → `annotated`.
"""

from __future__ import annotations

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
PENDING, IMPORTED, ANNOTATED = "pending", "imported", "annotated"
