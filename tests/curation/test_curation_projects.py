"""Label Studio projects per Loomstack project, against the real Label Studio, on SQLite and
PostgreSQL: two projects importing the same schema get a Label Studio project each and never
see, annotate or star each other's tasks; and an installation from before (one Label Studio
project per schema version, shared by every project) migrates without a new project for the
owner, while the other project's tasks move, with predictions and annotations, into a project
of its own, exactly once across a crash."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from curation_support import (
    Crash,
    crashing_send,
    jsonl,
    ls_tasks,
    make_curation,
    ticket_lines,
)
from label_studio_sdk.client import LabelStudio

from loomstack_curation import auto_accept, tables
from loomstack_curation.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_curation.annotations import AnnotationStore
from loomstack_curation.batch_results import read_results
from loomstack_curation.catalog import SchemaCatalog
from loomstack_curation.import_queue import ImportQueue
from loomstack_curation.importer import Importer
from loomstack_curation.label_config import label_config
from loomstack_curation.labelstudio_api import import_tasks
from loomstack_curation.predictions import regions
from loomstack_curation.projects import MAX_TITLE, ProjectMap
from loomstack_curation.reconcile import reconcile
from loomstack_curation.relocation import Relocation
from loomstack_curation.task_schema import TaskSchema
from loomstack_curation.tasks import TaskFilter, TaskQueries
from loomstack_curation.webhook import handle_event
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import NotFound

pytestmark = pytest.mark.labelstudio
REPO = Path(__file__).resolve().parents[2]


def counts(queries: TaskQueries, project: str) -> tuple[int, int, int]:
    stats = queries.statistics(project)
    return (
        sum(s.tasks for s in stats),
        sum(s.annotated for s in stats),
        sum(s.gold for s in stats),
    )


def batches_in(client: LabelStudio, ls_project: int) -> dict[str, int]:
    """How many tasks of each batch a Label Studio project holds."""
    found: dict[str, int] = {}
    for task in ls_tasks(client, ls_project):
        batch = task.data["loomstack_batch_id"]
        found[batch] = found.get(batch, 0) + 1
    return found


def test_two_projects_never_share_a_label_studio_project(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    assert cur.import_tickets("batch_a", 5, project="team-a") == "completed"
    assert cur.import_tickets("batch_b", 3, project="team-b") == "completed"
    assert cur.import_tickets("batch_b2", 2, project="team-b") == "completed"
    schema = cur.catalog.get("classify_ticket")
    a, b = cur.projects.lookup("team-a", schema), cur.projects.lookup("team-b", schema)
    assert a is not None and b is not None and a != b
    prefix = cur.projects.title_prefix
    assert label_studio.projects.get(id=a).title.startswith(f"{prefix}team-a/")
    assert label_studio.projects.get(id=b).title.startswith(f"{prefix}team-b/")
    assert batches_in(label_studio, a) == {"batch_a": 5}
    assert batches_in(label_studio, b) == {"batch_b": 3, "batch_b2": 2}
    assert [m.project for m in cur.projects.all()] == ["team-a", "team-b"]

    # An annotation of team-b's task is recorded only from an event of team-b's project.
    b_task = ls_tasks(label_studio, b)[0]
    made = label_studio.annotations.create(
        id=b_task.id, result=regions(schema, {"category": "Other", "urgency": "Low"}, gold=True)
    )
    event = {
        "action": "ANNOTATION_CREATED",
        "annotation": made.model_dump(mode="json"),
        "task": {"id": b_task.id},
    }
    assert handle_event(cur.annotations, {**event, "project": {"id": a}}).recorded == 0
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": made.id}]}
    assert counts(cur.queries, "team-b") == (5, 0, 0)
    assert handle_event(cur.annotations, {**event, "project": {"id": b}}).recorded == 1
    assert counts(cur.queries, "team-b") == (5, 1, 1)
    assert handle_event(cur.annotations, {**deleted, "project": {"id": a}}).deleted == 0
    assert counts(cur.queries, "team-b") == (5, 1, 1)
    assert counts(cur.queries, "team-a") == (5, 0, 0)

    # The reconcile reads each project's own Label Studio project; nothing crosses.
    outcome = reconcile(label_studio, cur.projects, cur.annotations)
    assert (outcome.projects, outcome.tasks, outcome.annotations) == (2, 1, 1)
    assert counts(cur.queries, "team-a") == (5, 0, 0)

    # Team-a cannot star team-b's task (the same 404 as for no task at all), nor list it.
    with pytest.raises(NotFound):
        cur.queries.set_gold("team-a", [b_task.id], True)
    listed = cur.queries.list_tasks("team-a", TaskFilter())
    assert len(listed) == 5 and {r.project for r in listed} == {"team-a"}
    assert batches_in(label_studio, a) == {"batch_a": 5}


class SharedProject(ProjectMap):
    """Stands for the mapping before migration 0003: one Label Studio project per schema
    version, whichever Loomstack project imports."""

    def __init__(self, engine: Any, client: LabelStudio, ls_project: int) -> None:
        super().__init__(engine, client)
        self.ls_project = ls_project

    def ensure(self, project: str, schema: TaskSchema) -> int:
        return self.ls_project


def old_installation(
    url: str, client: LabelStudio, tmp_path: Path
) -> tuple[Any, SchemaCatalog, int, str]:
    """A database at revision 0002 whose one Label Studio project holds team-a's six tasks
    (one gold) and team-b's three (two auto-accepted, one annotated by a person), recorded as
    the service then recorded them."""
    migrate(url, MIGRATIONS, VERSION_TABLE, "0002")
    engine = create_db_engine(url)
    # Today's importer and webhook code record curation events (0004); the old installation is
    # built with it, so the feed's table is there meanwhile and gone again before 0003 runs.
    tables.events.create(engine)
    catalog = SchemaCatalog(REPO / "schemas")
    schema = catalog.get("classify_ticket")
    prefix = f"t-{uuid.uuid4().hex[:8]} "
    old_title = f"{prefix}{schema.key} {schema.name}"[:MAX_TITLE]
    created = client.projects.create(title=old_title, label_config=label_config(schema))
    assert created.id is not None
    shared = int(created.id)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO curation_projects (schema_key, schema_id, schema_version, "
                "ls_project_id, title, created_at) VALUES (:k, :i, :v, :p, :t, 0)"
            ),
            {"k": schema.key, "i": schema.id, "v": schema.version, "p": shared, "t": old_title},
        )
    imports = ImportQueue(engine, catalog)
    importer = Importer(engine, catalog, SharedProject(engine, client, shared), imports)
    for batch, project, n, auto in (("old_a", "team-a", 6, False), ("old_b", "team-b", 3, True)):
        inputs, outputs = ticket_lines(n)
        if auto:  # the last line's answer does not fit: it waits for a person
            outputs[-1]["response"]["body"]["choices"][0]["message"]["content"] = "no idea"
        results = read_results(jsonl(inputs), jsonl(outputs))
        with engine.begin() as conn:
            imports.enqueue(
                conn,
                batch_id=batch,
                project=project,
                schema_type="classify_ticket",
                model="smollm2-test",
                input_file_id="file-in",
                output_file_id="file-out",
                auto_accept=auto,
            )
        (item,) = [i for i in imports.due() if i.batch_id == batch]
        assert importer.attempt(item, lambda _item, r=results: r) == "completed"
    store = AnnotationStore(engine, catalog)
    by_custom_id = {
        (t.data["loomstack_batch_id"], t.data["loomstack_custom_id"]): t.id
        for t in ls_tasks(client, shared)
    }
    for key, answers, gold in (
        (("old_a", "t0"), {"category": "Billing", "urgency": "High"}, True),
        (("old_b", "t2"), {"category": "Other", "urgency": "Critical"}, False),
    ):
        made = client.annotations.create(
            id=by_custom_id[key], result=regions(schema, answers, gold=gold)
        )
        event = {"action": "ANNOTATION_CREATED", "annotation": made.model_dump(mode="json")}
        assert handle_event(store, {**event, "task": {"id": by_custom_id[key]}}).recorded == 1
    tables.events.drop(engine)
    return engine, catalog, shared, prefix


def test_migration_keeps_a_shared_project_with_its_main_owner_and_moves_the_rest(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    engine, catalog, shared, prefix = old_installation(db_url, label_studio, tmp_path)
    schema = catalog.get("classify_ticket")
    queries = TaskQueries(
        engine, catalog, ProjectMap(engine, None), AnnotationStore(engine, catalog)
    )
    before = {p: counts(queries, p) for p in ("team-a", "team-b")}
    assert before == {"team-a": (6, 1, 1), "team-b": (3, 3, 0)}
    assert batches_in(label_studio, shared) == {"old_a": 6, "old_b": 3}
    projects_before = len(list(label_studio.projects.list()))

    migrate(db_url, MIGRATIONS, VERSION_TABLE)
    projects = ProjectMap(engine, label_studio, prefix)
    (mapped,) = projects.all()
    assert (mapped.project, mapped.ls_project_id) == ("team-a", shared)  # the majority's
    assert len(list(label_studio.projects.list())) == projects_before  # no project created

    annotations = AnnotationStore(engine, catalog)
    relocation = Relocation(
        engine, catalog, projects, annotations, chunk_size=2, send=crashing_send(import_tasks, 1)
    )
    (group,) = relocation.misplaced()
    assert (group.project, group.ls_project_id, group.tasks) == ("team-b", shared, 3)

    # Dies after Label Studio stored the first chunk's copies, before they were recorded.
    with pytest.raises(Crash):
        relocation.run()
    target = projects.lookup("team-b", schema)
    assert target is not None and target != shared
    assert batches_in(label_studio, target) == {"old_b": 2}
    assert batches_in(label_studio, shared) == {"old_a": 6, "old_b": 3}

    # The restarted service finds the two copies, moves the third, deletes the old ones.
    restarted = Relocation(engine, catalog, projects, annotations, chunk_size=2)
    outcome = restarted.run()
    assert (outcome.moved, outcome.deleted, outcome.waiting) == (3, 3, 0)
    assert restarted.misplaced() == []
    assert batches_in(label_studio, shared) == {"old_a": 6}
    assert batches_in(label_studio, target) == {"old_b": 3}
    assert label_studio.projects.get(id=target).title.startswith(f"{prefix}team-b/")
    assert restarted.run() == type(outcome)(0, 0, 0)

    # Each moved task: its data, prediction and annotations, and our rows name the copy.
    user = auto_accept.ensure_user(label_studio)
    copies = {t.data["loomstack_custom_id"]: t for t in ls_tasks(label_studio, target)}
    with engine.connect() as conn:
        rows = {
            r.custom_id: r
            for r in conn.execute(sa.select(tables.tasks).where(tables.tasks.c.project == "team-b"))
        }
        recorded = {r.ls_annotation_id: r for r in conn.execute(sa.select(tables.ls_annotations))}
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(tables.relocations)).scalar() == 0
        )
        (imported,) = conn.execute(
            sa.select(tables.imports.c.ls_project_id).where(tables.imports.c.batch_id == "old_b")
        ).scalars()
    assert imported == target
    for custom_id, copy in copies.items():
        row = rows[custom_id]
        assert (row.ls_task_id, row.ls_project_id, row.moving_to) == (copy.id, target, None)
        (annotation,) = copy.annotations
        assert row.annotation_id == annotation["id"]
        assert recorded[annotation["id"]].ls_task_id == copy.id
        automatic = custom_id in ("t0", "t1")
        assert (annotation["completed_by"] == user) is automatic
        assert bool(row.auto_accepted) is automatic
        assert (recorded[annotation["id"]].annotator == auto_accept.ANNOTATOR) is automatic
        if automatic:
            (prediction,) = copy.predictions
            assert annotation["result"] == prediction.result
            assert prediction.model_version == "smollm2-test"
        else:
            assert not copy.predictions  # its answer did not fit: no prediction to move
    assert {p: counts(queries, p) for p in before} == before

    # The reconcile agrees with all of it, and the owner's project is renamed after it.
    reconcile(label_studio, projects, annotations)
    assert {p: counts(queries, p) for p in before} == before
    with engine.connect() as conn:
        annotators = [
            r.annotator
            for r in conn.execute(sa.select(tables.ls_annotations.c.annotator))
            if r.annotator
        ]
    assert annotators == [auto_accept.ANNOTATOR] * 2
    assert projects.retitle(mapped, schema)
    assert label_studio.projects.get(id=shared).title.startswith(f"{prefix}team-a/")
    assert not projects.retitle(projects.all()[0], schema)
    engine.dispose()
