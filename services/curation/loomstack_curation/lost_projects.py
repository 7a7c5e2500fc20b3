"""Forgetting a Label Studio project that is gone, so its tasks are imported again.

A mapped Label Studio project can disappear under us: someone deleted it, or Label Studio's data
was wiped (`LABEL_STUDIO_FRESH=1 make labelstudio`), after which the new Label Studio hands out
the same ids again, to other projects. Its mapping then pointed imports at a project that 404s
(retried forever) or, worse, at a stranger's. What we recorded of it (task and annotation ids)
names things that no longer exist, or that are someone else's now.

`forget` drops all of it in one transaction and queues the imports of the batches it held again:
the importer then creates the project anew (projects.py) and imports every line of those
batches into it exactly once, with its prediction, as for a new batch. What people annotated
in the lost project was lost with it; the records of it here go too, as the reconcile treats an
annotation deleted in Label Studio. Nothing is ever sent to, read from or deleted in the lost
project's id again: in a wiped Label Studio it may be another project's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa

from . import tables
from .import_states import QUEUED

log = logging.getLogger(__name__)

_CHUNK = 500


@dataclass(frozen=True)
class Forgotten:
    """What forgetting a lost project dropped, and the imports it queued again."""

    ls_project_id: int
    tasks: int
    annotations: int
    requeued: list[str]


def forget(conn: sa.Connection, ls_project_id: int) -> Forgotten:
    """Drops a lost Label Studio project's mapping and every record that names it or its tasks;
    queues again the imports of the batches it held (call inside a write transaction)."""
    t, a, i = tables.tasks.c, tables.ls_annotations.c, tables.imports.c
    held = sa.select(t.ls_task_id).where(
        t.ls_project_id == ls_project_id, t.ls_task_id.is_not(None)
    )
    task_ids = [int(x) for x in conn.execute(held).scalars()]
    annotations = 0
    for start in range(0, len(task_ids), _CHUNK):
        annotations += (
            conn.execute(
                tables.ls_annotations.delete().where(
                    a.ls_task_id.in_(task_ids[start : start + _CHUNK])
                )
            ).rowcount
            or 0
        )
    batches = set(
        conn.execute(sa.select(t.batch_id).where(t.ls_project_id == ls_project_id).distinct())
        .scalars()
        .all()
    )
    batches |= set(
        conn.execute(sa.select(i.batch_id).where(i.ls_project_id == ls_project_id)).scalars().all()
    )
    tasks = conn.execute(tables.tasks.delete().where(t.ls_project_id == ls_project_id)).rowcount
    # Copies on their way there (relocation.py) stay where they are and move again later.
    conn.execute(tables.tasks.update().where(t.moving_to == ls_project_id).values(moving_to=None))
    # Old copies listed for deletion there: gone, and the id may be a stranger's now.
    conn.execute(
        tables.relocations.delete().where(tables.relocations.c.ls_project_id == ls_project_id)
    )
    requeued = sorted(batches)
    now = time.time()
    for start in range(0, len(requeued), _CHUNK):
        conn.execute(
            tables.imports.update()
            .where(i.batch_id.in_(requeued[start : start + _CHUNK]))
            .values(
                status=QUEUED,
                ls_project_id=None,
                imported_tasks=0,
                auto_accepted_tasks=0,
                prediction_problems=0,
                error="",
                error_code="",
                next_attempt_at=now,
                updated_at=now,
            )
        )
    conn.execute(tables.projects.delete().where(tables.projects.c.ls_project_id == ls_project_id))
    return Forgotten(ls_project_id, int(tasks or 0), annotations, requeued)
