"""Batch results → Label Studio tasks with valid predictions, against the real Label Studio, on
SQLite and PostgreSQL: failed lines are left out, nothing is ever imported twice (a second
import, a crash at any point of an import), an unknown schema waits for its schema, and a
Label Studio that is down keeps the import queued and retried."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from curation_support import (
    CATEGORIES,
    URGENCIES,
    Crash,
    Curation,
    crashing_send,
    jsonl,
    ls_tasks,
    make_curation,
    ticket,
    ticket_lines,
)
from label_studio_sdk.client import LabelStudio
from support import wait_until

from loomstack_curation import tables
from loomstack_curation.batch_results import read_results
from loomstack_curation.importer import Importer
from loomstack_curation.label_config import label_config
from loomstack_curation.labelstudio_api import import_tasks
from loomstack_curation.predictions import label_interface
from loomstack_curation.projects import ProjectMap

pytestmark = pytest.mark.labelstudio


@pytest.fixture
def curation(db_url: str, label_studio: LabelStudio, tmp_path: Path) -> Curation:
    return make_curation(db_url, label_studio, tmp_path)


def _import(cur: Curation, batch_id: str) -> Any:
    with cur.engine.connect() as conn:
        return conn.execute(
            sa.select(tables.imports).where(tables.imports.c.batch_id == batch_id)
        ).one()


def _task_rows(cur: Curation) -> list[Any]:
    with cur.engine.connect() as conn:
        return list(conn.execute(sa.select(tables.tasks)).all())


def test_1000_results_become_1000_tasks_with_valid_predictions(
    curation: Curation, label_studio: LabelStudio
) -> None:
    # 1,050 result lines, every 21st failed: exactly 1,000 are importable.
    started = time.monotonic()
    assert curation.import_tickets("batch_a", 1050, failed_every=21) == "completed"
    elapsed = time.monotonic() - started
    row = _import(curation, "batch_a")
    assert (row.result_lines, row.skipped_lines, row.imported_tasks) == (1000, 50, 1000)
    assert row.prediction_problems == 0
    schema = curation.catalog.get("classify_ticket")
    project_id = row.ls_project_id
    tasks = ls_tasks(label_studio, project_id)
    assert len(tasks) == 1000
    interface = label_interface(schema)
    by_prompt = {t.data["ticket"]: t for t in tasks}
    for i in range(1050):
        if i % 21 == 20:
            assert ticket(i) not in by_prompt  # a failed line is not a task
            continue
        task = by_prompt[ticket(i)]
        (prediction,) = task.predictions
        assert prediction.model_version == "smollm2-test"
        values = {r["from_name"]: r["value"] for r in prediction.result}
        assert values == {
            "category": {"choices": [CATEGORIES[i % 5]]},
            "urgency": {"choices": [URGENCIES[i % 4]]},
        }
        for region in prediction.result:
            assert interface.validate_region(region, return_errors=True) == []
    # Our rows name the Label Studio ids, one per line.
    rows = _task_rows(curation)
    assert sorted(r.ls_task_id for r in rows) == sorted(t.id for t in tasks)
    assert {r.status for r in rows} == {"imported"}
    print(f"imported 1000 tasks in {elapsed:.1f} s")

    # The same batch again (a replayed event, a retried attempt): nothing new.
    assert curation.import_tickets("batch_a", 1050, failed_every=21) == "completed"
    assert label_studio.projects.get(id=project_id).task_number == 1000
    assert len(_task_rows(curation)) == 1000


def test_project_mapping_survives_a_restart(
    curation: Curation, label_studio: LabelStudio, db_url: str, tmp_path: Path
) -> None:
    schema = curation.catalog.get("classify_ticket")
    first = curation.projects.ensure("p1", schema)
    # A restarted service (new objects, same database) finds the same project.
    again = ProjectMap(curation.engine, label_studio, curation.projects.title_prefix)
    assert again.ensure("p1", schema) == first
    # Another project gets a Label Studio project of its own, and the titles say whose.
    second = again.ensure("p2", schema)
    assert second != first
    prefix = curation.projects.title_prefix
    assert label_studio.projects.get(id=first).title.startswith(f"{prefix}p1/classify_ticket@1")
    assert label_studio.projects.get(id=second).title.startswith(f"{prefix}p2/classify_ticket@1")
    # A crash between creating the project and recording it: found by its title and owner line.
    with curation.engine.begin() as conn:
        conn.execute(tables.projects.delete().where(tables.projects.c.project == "p1"))
    assert again.ensure("p1", schema) == first
    assert again.ensure("p2", schema) == second
    titles = [p.title for p in label_studio.projects.list() if prefix in (p.title or "")]
    assert len(titles) == 2
    project = label_studio.projects.get(id=first)
    assert project.label_config == label_config(schema) or 'name="category"' in project.label_config


def test_restart_mid_import_still_exactly_1000_tasks(
    curation: Curation, label_studio: LabelStudio, db_url: str, tmp_path: Path
) -> None:
    inputs, outputs = ticket_lines(1000)
    results = read_results(jsonl(inputs), jsonl(outputs))
    item = curation.queue("batch_r")

    # 1) dies between chunks: after the second chunk is recorded.
    def stop_after_two(_count: int, seen: list[int] = []) -> None:  # noqa: B006
        seen.append(_count)
        if len(seen) == 2:
            raise Crash("killed between chunks")

    dying = Importer(
        curation.engine,
        curation.catalog,
        curation.projects,
        curation.imports,
        chunk_size=200,
        after_chunk=stop_after_two,
    )
    with pytest.raises(Crash):
        dying.import_results("batch_r", "p1", curation.catalog.get("classify_ticket"), results)
    rows = _task_rows(curation)
    assert len([r for r in rows if r.ls_task_id is not None]) == 400
    # The next chunk was prepared (recorded as pending) while the second one was imported.
    assert len([r for r in rows if r.ls_task_id is None]) == 200

    # 2) restarted, dies again: Label Studio stored chunk 4, we never learnt its ids.
    restarted = make_curation(
        db_url, None, tmp_path, chunk_size=200, send=crashing_send(import_tasks, 2)
    )
    restarted.projects = ProjectMap(restarted.engine, label_studio, curation.projects.title_prefix)
    restarted.importer.projects = restarted.projects
    with pytest.raises(Crash):
        restarted.importer.import_results(
            "batch_r", "p1", restarted.catalog.get("classify_ticket"), results
        )
    rows = _task_rows(curation)
    # The restarted run forgot the pending chunk Label Studio never got, imported one chunk,
    # then died with the next one stored in Label Studio and the one after it prepared.
    assert len([r for r in rows if r.ls_task_id is not None]) == 600
    assert len([r for r in rows if r.ls_task_id is None]) == 400
    project_id = restarted.projects.ensure("p1", restarted.catalog.get("classify_ticket"))
    assert label_studio.projects.get(id=project_id).task_number == 800

    # 3) restarted once more with a healthy Label Studio: finishes, nothing twice.
    final = make_curation(db_url, None, tmp_path, chunk_size=200)
    final.projects = ProjectMap(final.engine, label_studio, curation.projects.title_prefix)
    final.importer.projects = final.projects
    assert final.run(item, results) == "completed"
    project_id = final.projects.ensure("p1", final.catalog.get("classify_ticket"))
    tasks = ls_tasks(label_studio, project_id)
    assert len(tasks) == 1000
    assert sorted(t.data["loomstack_custom_id"] for t in tasks) == sorted(
        f"t{i}" for i in range(1000)
    )
    rows = _task_rows(curation)
    assert len(rows) == 1000 and all(r.ls_task_id is not None for r in rows)
    assert _import(curation, "batch_r").imported_tasks == 1000


def test_unknown_schema_fails_clearly_and_is_retried_when_it_appears(
    curation: Curation, label_studio: LabelStudio
) -> None:
    inputs, outputs = ticket_lines(30)
    results = read_results(jsonl(inputs), jsonl(outputs))
    item = curation.queue("batch_u", schema_type="triage_ticket")
    assert curation.run(item, results) == "failed"
    row = _import(curation, "batch_u")
    assert row.status == "failed"
    assert "unknown schema 'triage_ticket'" in row.error and "classify_ticket" in row.error
    assert row.error_code == "unknown_schema"
    assert curation.imports.due() == []  # nothing to retry while the schema is unknown
    assert _task_rows(curation) == []

    # The schema file appears (a copy of classify_ticket under the new id).
    text = (curation.schemas_dir / "classify_ticket.yaml").read_text()
    (curation.schemas_dir / "triage_ticket.yaml").write_text(
        text.replace("id: classify_ticket", "id: triage_ticket")
    )
    assert curation.catalog.refresh()
    (due,) = curation.imports.due()
    assert due.batch_id == "batch_u"
    assert curation.run(due, results) == "completed"
    row = _import(curation, "batch_u")
    assert (row.status, row.imported_tasks, row.error) == ("completed", 30, "")
    assert len(ls_tasks(label_studio, row.ls_project_id)) == 30


def test_label_studio_down_keeps_the_import_queued_with_backoff(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    from label_studio_sdk.client import LabelStudio as Client

    from loomstack_curation.labelstudio_server import free_port

    down = Client(base_url=f"http://127.0.0.1:{free_port()}", api_key="0" * 40, timeout=2)
    cur = make_curation(db_url, down, tmp_path, retry_base=0.2, retry_max=5)
    inputs, outputs = ticket_lines(40)
    results = read_results(jsonl(inputs), jsonl(outputs))
    item = cur.queue("batch_d")
    before = time.time()
    assert cur.run(item, results) == "queued"
    assert cur.run(item, results) == "queued"
    row = _import(cur, "batch_d")
    assert row.status == "queued" and row.attempts == 2
    assert "unreachable" in row.error
    assert row.next_attempt_at >= before + 0.4  # the second delay doubled the first
    assert cur.imports.due(now=time.time()) == [] or row.next_attempt_at <= time.time()

    # Label Studio is back: the next due attempt imports everything, once.
    cur.projects.client = label_studio
    due = wait_until(lambda: cur.imports.due(), 5, 0.05, "the retry to be due")
    assert cur.run(due[0], results) == "completed"
    row = _import(cur, "batch_d")
    assert (row.status, row.attempts, row.imported_tasks) == ("completed", 3, 40)
    assert len(ls_tasks(label_studio, row.ls_project_id)) == 40


def test_failed_imports_never_starve_a_new_one(db_url: str, tmp_path: Path) -> None:
    """More imports failing for an unknown schema than a page of the queue (which used to
    take the oldest rows and then drop the failed ones): a new import is still the next due,
    and the failed ones come back, once, when their schema appears."""
    cur = make_curation(db_url, None, tmp_path)
    page = 10
    failing = 6 * page  # more than the old query's page of limit * 5 rows

    def never_read(_item: Any) -> Any:
        raise AssertionError("a failed import must not read its batch")

    for i in range(failing):
        item = cur.queue(f"batch_f{i:03}", schema_type=f"later_{i % 3}")
        assert cur.importer.attempt(item, never_read) == "failed"
    cur.queue("batch_new")  # queued after every failed one: the youngest row
    assert [d.batch_id for d in cur.imports.due(limit=page)] == ["batch_new"]
    assert [d.batch_id for d in cur.imports.due(limit=1)] == ["batch_new"]

    # One of the three unknown schemas appears: its imports are queued again, the others wait.
    text = (cur.schemas_dir / "classify_ticket.yaml").read_text()
    (cur.schemas_dir / "later_1.yaml").write_text(
        text.replace("id: classify_ticket", "id: later_1")
    )
    assert cur.catalog.refresh()
    due = {d.batch_id for d in cur.imports.due(limit=1000)}
    assert due == {"batch_new"} | {f"batch_f{i:03}" for i in range(1, failing, 3)}
    with cur.engine.connect() as conn:
        statuses = dict(
            conn.execute(
                sa.select(tables.imports.c.status, sa.func.count()).group_by(
                    tables.imports.c.status
                )
            ).all()
        )
    assert statuses == {"queued": 1 + failing // 3, "failed": failing - failing // 3}
