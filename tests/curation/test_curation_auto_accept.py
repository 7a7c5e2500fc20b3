"""Auto-accept against the real Label Studio, on SQLite and PostgreSQL: a batch with
`metadata.curation_auto_accept` becomes tasks annotated with their predictions (by the
`auto-accept` user in Label Studio, recorded at once here), a snapshot takes them without a
reconcile, the reconcile keeps them automatic until a person changes one, answers that do not
fit wait for people, and an import that dies after Label Studio stored a chunk still records
every automatic annotation once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from curation_support import (
    CATEGORIES,
    URGENCIES,
    Curation,
    input_line,
    jsonl,
    ls_tasks,
    make_curation,
    output_line,
    ticket,
    ticket_answer,
)
from label_studio_sdk.client import LabelStudio

from loomstack_curation import auto_accept, tables
from loomstack_curation.batch_results import BatchResults, read_results
from loomstack_curation.feed import BatchEvent, FeedConsumer
from loomstack_curation.import_queue import QueuedImport
from loomstack_curation.importer import Importer
from loomstack_curation.inference_client import InferenceClient
from loomstack_curation.labelstudio_api import import_tasks
from loomstack_curation.predictions import regions
from loomstack_curation.projects import ProjectMap
from loomstack_curation.reconcile import reconcile
from loomstack_curation.snapshots import SnapshotFilter
from loomstack_kit.database import write_transaction
from loomstack_kit.errors import FailedPrecondition

pytestmark = pytest.mark.labelstudio
N = 24
MISFIT = 5  # this line's answer names a category the schema does not have
FAILED = 7  # this line's request failed (no task at all)


def results() -> BatchResults:
    inputs, outputs = [], []
    for i in range(N):
        inputs.append(input_line(f"t{i}", ticket(i)))
        answer: str | None = ticket_answer(i)
        if i == MISFIT:
            answer = json.dumps({"category": "Refund", "urgency": "Low"})
        outputs.append(output_line(f"t{i}", None if i == FAILED else answer))
    return read_results(jsonl(inputs), jsonl(outputs))


def queue(cur: Curation, batch_id: str, *, auto: bool = True) -> QueuedImport:
    with write_transaction(cur.engine) as conn:
        cur.imports.enqueue(
            conn,
            batch_id=batch_id,
            project="p1",
            schema_type="classify_ticket",
            model="smollm2-test",
            input_file_id="file-in",
            output_file_id="file-out",
            auto_accept=auto,
        )
    (item,) = [i for i in cur.imports.due() if i.batch_id == batch_id]
    return item


def rows(cur: Curation, table: sa.Table) -> list[Any]:
    with cur.engine.connect() as conn:
        return list(conn.execute(sa.select(table)).all())


def import_row(cur: Curation, batch_id: str) -> Any:
    with cur.engine.connect() as conn:
        return conn.execute(
            sa.select(tables.imports).where(tables.imports.c.batch_id == batch_id)
        ).one()


def auto_user(client: LabelStudio) -> int:
    return auto_accept.ensure_user(client)


def upload_via(inference: InferenceClient) -> Any:
    return lambda project, name, content: inference.upload(project, name, content)


def test_auto_accepted_tasks_are_annotated_there_and_here_and_snapshots_take_them_at_once(
    db_url: str, label_studio: LabelStudio, tmp_path: Path, inference: InferenceClient
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    item = queue(cur, "batch_auto")
    assert item.auto_accept is True
    assert cur.run(item, results()) == "completed"
    accepted = N - 2  # every line but the failed one and the misfit
    row = import_row(cur, "batch_auto")
    assert (row.imported_tasks, row.auto_accepted_tasks, row.prediction_problems) == (
        N - 1,
        accepted,
        1,
    )

    # In Label Studio: the prediction, and an annotation equal to it by the auto-accept user.
    user_id = auto_user(label_studio)
    tasks = {t.data["loomstack_custom_id"]: t for t in ls_tasks(label_studio, row.ls_project_id)}
    assert len(tasks) == N - 1
    for i in range(N):
        if i == FAILED:
            continue
        task = tasks[f"t{i}"]
        if i == MISFIT:
            assert not task.annotations  # waits for a person
            continue
        (annotation,) = task.annotations
        (prediction,) = task.predictions
        assert annotation["completed_by"] == user_id
        assert annotation["ground_truth"] is False
        assert annotation["result"] == prediction.result
        values = {r["from_name"]: r["value"]["choices"] for r in annotation["result"]}
        assert values == {"category": [CATEGORIES[i % 5]], "urgency": [URGENCIES[i % 4]]}

    # Here: recorded at once, as automatic.
    annotations = rows(cur, tables.ls_annotations)
    assert len(annotations) == accepted
    assert {a.annotator for a in annotations} == {auto_accept.ANNOTATOR}
    by_custom_id = {t.custom_id: t for t in rows(cur, tables.tasks)}
    assert by_custom_id[f"t{MISFIT}"].status == "imported"
    annotated = [t for t in by_custom_id.values() if t.status == "annotated"]
    assert len(annotated) == accepted
    assert all(t.auto_accepted and not t.corrected and not t.gold for t in annotated)

    # A snapshot takes them without waiting for the reconcile, and says how many are automatic.
    snap = cur.snapshots.create(
        "p1",
        "auto",
        SnapshotFilter(schema_id="classify_ticket"),
        validation_fraction=0.25,
        upload=upload_via(inference),
    )
    assert snap.training_examples + snap.validation_examples == accepted
    assert snap.validation_examples >= 1
    assert snap.manifest["counts"]["auto_accepted"] == accepted
    lines = inference.read_file("p1", snap.training_file_id).decode().splitlines()
    example = json.loads(lines[0])["messages"]
    assert [m["role"] for m in example] == ["system", "user", "assistant"]
    assert json.loads(example[2]["content"]).keys() == {"category", "urgency"}
    with pytest.raises(FailedPrecondition, match="no annotated task matches"):
        cur.snapshots.create(
            "p1", "people", SnapshotFilter(exclude_auto_accepted=True), upload=upload_via(inference)
        )

    # The reconcile finds the same annotations: nothing changes, they stay automatic.
    outcome = reconcile(label_studio, cur.projects, cur.annotations)
    assert (outcome.tasks, outcome.annotations) == (accepted, accepted)
    assert {a.annotator for a in rows(cur, tables.ls_annotations)} == {auto_accept.ANNOTATOR}

    # A person corrects one automatic annotation and annotates the misfit: both are theirs.
    schema = cur.catalog.get("classify_ticket")
    corrected = tasks["t0"].annotations[0]
    label_studio.annotations.update(
        id=corrected["id"],
        result=regions(schema, {"category": "Other", "urgency": "Critical"}),
    )
    label_studio.annotations.create(
        id=tasks[f"t{MISFIT}"].id,
        result=regions(schema, {"category": "Billing", "urgency": "Low"}),
    )
    reconcile(label_studio, cur.projects, cur.annotations)
    by_custom_id = {t.custom_id: t for t in rows(cur, tables.tasks)}
    assert not by_custom_id["t0"].auto_accepted and by_custom_id["t0"].corrected
    assert by_custom_id[f"t{MISFIT}"].status == "annotated"
    assert not by_custom_id[f"t{MISFIT}"].auto_accepted
    people = cur.snapshots.create(
        "p1", "people", SnapshotFilter(exclude_auto_accepted=True), upload=upload_via(inference)
    )
    assert (people.training_examples, people.manifest["counts"]["auto_accepted"]) == (2, 0)
    assert people.manifest["filter"]["exclude_auto_accepted"] is True

    # The same batch again (a replayed event): no second task, no second annotation.
    assert cur.run(item, results()) == "completed"
    again = ls_tasks(label_studio, row.ls_project_id)
    assert len(again) == N - 1
    assert sum(len(t.annotations) for t in again) == accepted + 1
    assert len(rows(cur, tables.ls_annotations)) == accepted + 1


def test_the_flag_comes_from_batch_metadata_and_can_be_refused(
    label_studio: LabelStudio, tmp_path: Path
) -> None:
    assert auto_accept.requested({"curation_auto_accept": "true"})
    assert auto_accept.requested({"curation_auto_accept": " TRUE "})
    assert auto_accept.requested({"curation_auto_accept": "1"})
    assert not auto_accept.requested({"curation_auto_accept": "false"})
    assert not auto_accept.requested({"schema_type": "classify_ticket"})

    cur = make_curation(f"sqlite:///{tmp_path / 'curation.db'}", label_studio, tmp_path)
    consumer = FeedConsumer(cur.engine, cur.imports)

    def event(sequence: int, batch_id: str, **metadata: str) -> BatchEvent:
        return BatchEvent(
            sequence,
            "batch.completed",
            batch_id,
            "p1",
            "smollm2-test",
            "file-in",
            "file-out",
            metadata={"schema_type": "classify_ticket", **metadata},
        )

    assert consumer.handle([event(1, "b_auto", curation_auto_accept="true"), event(2, "b_plain")])
    flags = {i.batch_id: i.auto_accept for i in cur.imports.due()}
    assert flags == {"b_auto": True, "b_plain": False}

    # A batch without the flag: tasks with predictions, no annotations.
    (plain,) = [i for i in cur.imports.due() if i.batch_id == "b_plain"]
    assert cur.run(plain, results()) == "completed"
    row = import_row(cur, "b_plain")
    assert row.auto_accepted_tasks == 0
    assert not any(t.annotations for t in ls_tasks(label_studio, row.ls_project_id))
    assert rows(cur, tables.ls_annotations) == []

    # An installation that does not allow auto-accept ignores the flag.
    cur.imports.allow_auto_accept = False
    assert consumer.handle([event(3, "b_refused", curation_auto_accept="true")])
    (refused,) = [i for i in cur.imports.due() if i.batch_id == "b_refused"]
    assert refused.auto_accept is False
    assert import_row(cur, "b_refused").auto_accept is False


class Crash(Exception):
    """Stands for the process dying at that point."""


def test_a_crash_after_label_studio_stored_the_chunk_still_records_every_annotation_once(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path, chunk_size=10)
    item = queue(cur, "batch_crash")
    real_send = import_tasks
    calls: list[int] = []

    def send_then_crash(client: LabelStudio, project: int, tasks: list[dict[str, Any]]) -> Any:
        ids = real_send(client, project, tasks)
        calls.append(len(ids))
        if len(calls) == 2:
            raise Crash("killed after Label Studio stored the second chunk")
        return ids

    crashing = Importer(
        cur.engine, cur.catalog, cur.projects, cur.imports, chunk_size=10, send=send_then_crash
    )
    schema = cur.catalog.get("classify_ticket")
    with pytest.raises(Crash):
        crashing.import_results(
            "batch_crash", "p1", schema, results(), model="smollm2-test", auto_accept=True
        )
    # The first chunk (its misfit has none) is recorded.
    assert len(rows(cur, tables.ls_annotations)) == 9

    # Restarted: the chunk Label Studio has is found, with its automatic annotations.
    restarted = make_curation(db_url, None, tmp_path, chunk_size=10)
    restarted.projects = ProjectMap(restarted.engine, label_studio, cur.projects.title_prefix)
    restarted.importer.projects = restarted.projects
    assert restarted.run(item, results()) == "completed"
    row = import_row(restarted, "batch_crash")
    assert (row.imported_tasks, row.auto_accepted_tasks) == (N - 1, N - 2)
    tasks = ls_tasks(label_studio, row.ls_project_id)
    assert len(tasks) == N - 1
    assert sum(len(t.annotations) for t in tasks) == N - 2
    annotations = rows(restarted, tables.ls_annotations)
    assert sorted(a.ls_annotation_id for a in annotations) == sorted(
        a["id"] for t in tasks for a in t.annotations
    )
    assert {a.annotator for a in annotations} == {auto_accept.ANNOTATOR}
