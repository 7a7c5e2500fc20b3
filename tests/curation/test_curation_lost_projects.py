"""A mapped Label Studio project that is gone (deleted, or Label Studio's data wiped) or replaced
(its id now holds another title and owner, as a wiped Label Studio hands ids out again) is
forgotten and its batches imported again into a new project: every line lands exactly once,
nothing is written to the project that took the id. Against the real Label Studio, on SQLite
and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from curation_support import Curation, jsonl, ls_tasks, make_curation, ticket_lines
from label_studio_sdk.client import LabelStudio

from loomstack_curation import tables
from loomstack_curation.batch_results import BatchResults, read_results
from loomstack_curation.import_records import get_import
from loomstack_curation.label_config import label_config
from loomstack_curation.predictions import regions
from loomstack_curation.webhook import handle_event
from loomstack_kit.database import write_transaction

pytestmark = pytest.mark.labelstudio


def _results(n: int) -> BatchResults:
    inputs, outputs = ticket_lines(n)
    return read_results(jsonl(inputs), jsonl(outputs))


def _import(cur: Curation, batch_id: str, n: int) -> str:
    item = cur.queue(batch_id, project="team-a")
    return cur.run(item, _results(n))


def _run_due(cur: Curation, sizes: dict[str, int]) -> list[str]:
    """Runs the due imports as the service's worker does; the batches it ran."""
    ran = []
    for item in cur.imports.due():
        assert cur.run(item, _results(sizes[item.batch_id])) == "completed"
        ran.append(item.batch_id)
    return sorted(ran)


def _lines_in(client: LabelStudio, ls_project: int) -> list[tuple[str, str]]:
    return sorted(
        (t.data["loomstack_batch_id"], t.data["loomstack_custom_id"])
        for t in ls_tasks(client, ls_project)
    )


def _recorded(cur: Curation) -> list[tuple[str, str, int]]:
    t = tables.tasks.c
    with cur.engine.connect() as conn:
        rows = conn.execute(sa.select(t.batch_id, t.custom_id, t.ls_project_id)).all()
    return sorted((r.batch_id, r.custom_id, int(r.ls_project_id)) for r in rows)


def _expected(ls_project: int, sizes: dict[str, int]) -> list[tuple[str, str, int]]:
    return sorted((b, f"t{i}", ls_project) for b, n in sizes.items() for i in range(n))


def test_a_deleted_project_is_recreated_and_an_import_lands_exactly_once(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    assert _import(cur, "batch_1", 5) == "completed"
    schema = cur.catalog.get("classify_ticket")
    old = cur.projects.lookup("team-a", schema)
    assert old is not None
    # A person's annotation, recorded through the webhook.
    task = ls_tasks(label_studio, old)[0]
    made = label_studio.annotations.create(
        id=task.id, result=regions(schema, {"category": "Other", "urgency": "Low"})
    )
    event = {"action": "ANNOTATION_CREATED", "annotation": made.model_dump(mode="json")}
    assert handle_event(cur.annotations, {**event, "task": {"id": task.id}}).recorded == 1

    label_studio.projects.delete(id=old)
    # The next import: into a new project of team-a (before: 404s, retried forever).
    assert _import(cur, "batch_2", 3) == "completed"
    new = cur.projects.lookup("team-a", schema)
    assert new is not None and new != old
    # batch_1 was queued again and its lines go into the new project too, exactly once.
    assert _run_due(cur, {"batch_1": 5}) == ["batch_1"]
    sizes = {"batch_1": 5, "batch_2": 3}
    assert _lines_in(label_studio, new) == [(b, c) for b, c, _ in _expected(new, sizes)]
    assert _recorded(cur) == _expected(new, sizes)
    assert get_import(cur.engine, "team-a", "batch_1").imported_tasks == 5
    assert get_import(cur.engine, "team-a", "batch_1").ls_project_id == new
    # The annotation went with the deleted project; its record too.
    stats = cur.queries.statistics("team-a")
    assert (sum(s.tasks for s in stats), sum(s.annotated for s in stats)) == (8, 0)
    with cur.engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(tables.ls_annotations))
        assert left.scalar() == 0

    # Nothing more to do, nothing imported twice, one project with the title.
    assert cur.imports.due() == []
    assert _import(cur, "batch_2", 3) == "completed"  # the same batch again: no new task
    assert len(ls_tasks(label_studio, new)) == 8
    title = cur.projects.title("team-a", schema)
    assert [int(p.id) for p in label_studio.projects.list(title=title) if p.title == title] == [new]
    assert cur.projects.forget_lost() == []


def test_a_replaced_project_is_never_written_to_and_the_batches_move_on(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    assert _import(cur, "batch_r", 4) == "completed"
    schema = cur.catalog.get("classify_ticket")
    old = cur.projects.lookup("team-a", schema)
    assert old is not None
    # A wiped Label Studio: our project is gone and its id belongs to a stranger's project.
    stranger = label_studio.projects.create(
        title=f"{cur.projects.title_prefix}someone else", label_config=label_config(schema)
    )
    assert stranger.id is not None
    label_studio.projects.import_tasks(
        id=stranger.id, request=[{"data": {"ticket": "theirs 1"}}, {"data": {"ticket": "theirs 2"}}]
    )
    label_studio.projects.delete(id=old)
    with write_transaction(cur.engine) as conn:
        for table in (tables.projects, tables.tasks, tables.imports):
            conn.execute(
                table.update().where(table.c.ls_project_id == old).values(ls_project_id=stranger.id)
            )

    (forgotten,) = cur.projects.forget_lost()  # what the reconcile does before each pass
    assert (forgotten.ls_project_id, forgotten.tasks, forgotten.requeued) == (
        stranger.id,
        4,
        ["batch_r"],
    )
    assert get_import(cur.engine, "team-a", "batch_r").status == "queued"
    assert _run_due(cur, {"batch_r": 4}) == ["batch_r"]
    assert _import(cur, "batch_r2", 2) == "completed"
    new = cur.projects.lookup("team-a", schema)
    assert new is not None and new not in (old, stranger.id)
    sizes = {"batch_r": 4, "batch_r2": 2}
    assert _recorded(cur) == _expected(new, sizes)
    assert _lines_in(label_studio, new) == [(b, c) for b, c, _ in _expected(new, sizes)]
    # The stranger's project kept exactly its own two tasks.
    theirs = ls_tasks(label_studio, stranger.id)
    assert sorted(t.data["ticket"] for t in theirs) == ["theirs 1", "theirs 2"]
