"""Annotations made through Label Studio's API the way a browser makes them come back by
webhook and by the reconcile (a missed webhook loses nothing); gold stars, corrections and
agreement are recorded; snapshots contain exactly the selected examples and are stored as
`fine-tune` files of the real inference service. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from curation_support import CATEGORIES, URGENCIES, Curation, ls_tasks, make_curation, ticket
from label_studio_sdk.client import LabelStudio

from loomstack_curation import tables
from loomstack_curation.inference_client import InferenceClient
from loomstack_curation.predictions import regions
from loomstack_curation.reconcile import reconcile
from loomstack_curation.snapshots import SnapshotFilter
from loomstack_curation.tasks import TaskFilter
from loomstack_curation.webhook import handle_event
from loomstack_kit.errors import FailedPrecondition, InvalidArgument, NotFound

pytestmark = pytest.mark.labelstudio
N = 100


def answers_of(i: int, second: bool = False) -> dict[str, str]:
    """What the person answers for ticket i: every 10th category corrected; a second
    annotator (tasks 0-9) disagrees on the urgency of the odd ones."""
    category = CATEGORIES[(i + 1) % 5] if i % 10 == 0 else CATEGORIES[i % 5]
    urgency = URGENCIES[(i + 1) % 4] if second and i % 2 else URGENCIES[i % 4]
    return {"category": category, "urgency": urgency}


def annotate(cur: Curation, client: LabelStudio, batch_id: str, n: int) -> dict[int, Any]:
    """Imports n tickets and annotates them through Label Studio's API (as a browser does):
    every 4th is gold, tasks 0-9 get a second annotation. Returns ticket number → task id,
    and keeps the first annotations in `cur.first_annotations`."""
    assert cur.import_tickets(batch_id, n) == "completed"
    schema = cur.catalog.get("classify_ticket")
    project_id = cur.projects.ensure("p1", schema)
    by_prompt = {t.data["ticket"]: t.id for t in ls_tasks(client, project_id)}
    task_ids = {i: by_prompt[ticket(i)] for i in range(n)}

    def submit(i: int, second: bool = False) -> Any:
        result = regions(schema, answers_of(i, second), gold=i % 4 == 0)
        return client.annotations.create(id=task_ids[i], result=result, lead_time=3.0)

    # Four people at once.
    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(submit, range(n)))
    for i in range(min(n, 10)):
        submit(i, second=True)
    cur.first_annotations = first  # type: ignore[attr-defined]
    return task_ids


def stats(cur: Curation) -> Any:
    (s,) = cur.queries.statistics("p1")
    return s


def read_jsonl(inference: InferenceClient, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in inference.read_file("p1", file_id).decode().splitlines()]


def upload_via(inference: InferenceClient) -> Any:
    return lambda project, name, content: inference.upload(project, name, content)


def test_webhook_and_reconcile_record_every_annotation_and_snapshots_take_the_gold_ones(
    db_url: str, label_studio: LabelStudio, tmp_path: Path, inference: InferenceClient
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    task_ids = annotate(cur, label_studio, "batch_x", N)
    project_id = cur.projects.ensure("p1", cur.catalog.get("classify_ticket"))

    # The webhook delivers the first 50 annotations; the other 60 are "missed".
    for annotation, i in zip(cur.first_annotations[:50], range(50), strict=True):  # type: ignore[attr-defined]
        outcome = handle_event(
            cur.annotations,
            {
                "action": "ANNOTATION_CREATED",
                "annotation": annotation.model_dump(mode="json"),
                "task": {"id": task_ids[i]},
                "project": {"id": project_id},
            },
        )
        assert outcome.recorded == 1
    assert stats(cur).annotated == 50

    # The reconcile pages through every task: nothing is lost.
    outcome = reconcile(label_studio, cur.projects, cur.annotations, page_size=30)
    assert outcome.tasks == N and outcome.annotations == N + 10
    s = stats(cur)
    assert (s.tasks, s.annotated, s.gold, s.multi_annotated) == (N, N, 25, 10)
    # Every 10th category corrected, plus the odd second annotations' urgencies.
    assert s.corrected == 10 + 5
    assert s.mean_agreement == pytest.approx(0.75)  # five agree fully, five on half
    # A second reconcile changes nothing.
    reconcile(label_studio, cur.projects, cur.annotations)
    assert stats(cur) == s

    # Snapshot of the gold tasks: exactly the 25 gold tickets, with the people's answers.
    snap = cur.snapshots.create(
        "p1", "tickets-gold", SnapshotFilter(gold_only=True), upload=upload_via(inference)
    )
    assert (snap.version, snap.training_examples, snap.validation_examples) == (1, 25, 0)
    lines = read_jsonl(inference, snap.training_file_id)
    gold = {i for i in range(N) if i % 4 == 0}
    assert {line["messages"][1]["content"] for line in lines} == {ticket(i) for i in gold}
    for line in lines:
        i = int(line["messages"][1]["content"].split()[1].rstrip(":"))
        latest = answers_of(i, second=i < 10)
        assert json.loads(line["messages"][2]["content"]) == latest
        assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
    assert snap.manifest["counts"]["training"] == 25
    assert snap.manifest["filter"]["gold_only"] is True
    assert sorted(snap.manifest["task_ids"]["training"]) == sorted(task_ids[i] for i in gold)

    # A deleted annotation (ANNOTATIONS_DELETED) takes task 12's gold star away.
    deleted = cur.first_annotations[12]  # type: ignore[attr-defined]
    label_studio.annotations.delete(id=deleted.id)
    handle_event(
        cur.annotations, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": deleted.id}]}
    )
    assert stats(cur).gold == 24
    again = cur.snapshots.create(
        "p1", "tickets-gold", SnapshotFilter(gold_only=True), upload=upload_via(inference)
    )
    assert (again.version, again.training_examples) == (2, 24)
    # Snapshots are immutable: version 1 still has its 25.
    assert len(read_jsonl(inference, snap.training_file_id)) == 25
    assert [r.version for r in cur.snapshots.list_snapshots("p1", "tickets-gold")] == [2, 1]

    # Minimum agreement: only the five fully agreeing double annotations.
    agreed = cur.snapshots.create(
        "p1", "agreed", SnapshotFilter(min_agreement=0.9), upload=upload_via(inference)
    )
    assert agreed.training_examples == 5

    # Deterministic split and the conversions.
    split = cur.snapshots.create(
        "p1",
        "all",
        SnapshotFilter(schema_id="classify_ticket"),
        fmt="alpaca",
        validation_fraction=0.3,
        upload=upload_via(inference),
    )
    assert split.training_examples + split.validation_examples == N - 1  # task 12 has none now
    assert 10 <= split.validation_examples <= 50
    resplit = cur.snapshots.create(
        "p1",
        "all",
        SnapshotFilter(),
        fmt="sharegpt",
        validation_fraction=0.3,
        upload=upload_via(inference),
    )
    assert resplit.manifest["task_ids"] == split.manifest["task_ids"]
    alpaca = read_jsonl(inference, split.training_file_id)[0]
    assert set(alpaca) == {"instruction", "input", "output", "system"}
    assert alpaca["instruction"].startswith("Ticket ")
    assert json.loads(alpaca["output"]).keys() == {"category", "urgency"}
    sharegpt = read_jsonl(inference, resplit.validation_file_id)[0]  # type: ignore[arg-type]
    assert [t["from"] for t in sharegpt["conversations"]] == ["system", "human", "gpt"]
    chatml = cur.snapshots.create(
        "p1", "chatml", SnapshotFilter(limit=7), fmt="chatml", upload=upload_via(inference)
    )
    text = read_jsonl(inference, chatml.training_file_id)
    assert len(text) == 7
    assert text[0]["text"].startswith("<|im_start|>system\n") and text[0]["text"].endswith(
        "<|im_end|>\n"
    )


def test_bad_snapshot_requests_store_nothing(
    db_url: str, label_studio: LabelStudio, tmp_path: Path, inference: InferenceClient
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    upload = upload_via(inference)
    with pytest.raises(FailedPrecondition, match="no annotated task matches"):
        cur.snapshots.create("p1", "empty", SnapshotFilter(), upload=upload)
    cur.import_tickets("batch_e", 5)
    with pytest.raises(FailedPrecondition):  # imported, but nothing is annotated yet
        cur.snapshots.create("p1", "empty", SnapshotFilter(gold_only=True), upload=upload)
    with pytest.raises(InvalidArgument, match="validation_fraction"):
        cur.snapshots.create("p1", "x", SnapshotFilter(), validation_fraction=0.9, upload=upload)
    with pytest.raises(InvalidArgument, match="name"):
        cur.snapshots.create("p1", "../etc", SnapshotFilter(), upload=upload)
    with pytest.raises(InvalidArgument, match="min_agreement"):
        cur.snapshots.create("p1", "x", SnapshotFilter(min_agreement=2), upload=upload)
    with pytest.raises(InvalidArgument, match="format"):
        cur.snapshots.create("p1", "x", SnapshotFilter(), fmt="csv", upload=upload)
    with pytest.raises(NotFound, match="unknown schema"):
        cur.snapshots.create("p1", "x", SnapshotFilter(schema_id="nope"), upload=upload)
    with cur.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.snapshots)).scalar() == 0


def test_gold_star_from_our_side_and_duplicates(
    db_url: str, label_studio: LabelStudio, tmp_path: Path, inference: InferenceClient
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    task_ids = annotate(cur, label_studio, "batch_g", 4)  # tickets 0-3, 0 is gold
    # The same three tickets again in another batch, annotated the same way: duplicates.
    schema = cur.catalog.get("classify_ticket")
    assert cur.import_tickets("batch_h", 4) == "completed"
    rows = cur.queries.list_tasks(
        "p1",
        TaskFilter(batch_id="batch_h"),
    )
    h_ids = {r.custom_id: r.ls_task_id for r in rows}
    for i in range(3):
        label_studio.annotations.create(
            id=h_ids[f"t{i}"], result=regions(schema, answers_of(i, second=i < 10), gold=i % 4 == 0)
        )
    reconcile(label_studio, cur.projects, cur.annotations)

    # Gold star on an annotated task (1) and on one nobody annotated (batch_h t3).
    updated = cur.queries.set_gold("p1", [task_ids[1], h_ids["t3"]], True)
    assert [r.gold for r in updated] == [True, True]
    assert updated[1].status == "annotated" and not updated[1].corrected  # the prediction, starred
    # Label Studio says the same (the next reconcile keeps it).
    reconcile(label_studio, cur.projects, cur.annotations)
    assert {
        r.ls_task_id
        for r in cur.queries.list_tasks(
            "p1",
            TaskFilter(gold_only=True),
        )
    } == {task_ids[0], task_ids[1], h_ids["t0"], h_ids["t3"]}
    # Taking it away again.
    (unstarred,) = cur.queries.set_gold("p1", [task_ids[1]], False)
    assert not unstarred.gold
    with pytest.raises(NotFound):
        cur.queries.set_gold("p1", [999_999_999], True)

    snap = cur.snapshots.create("p1", "dedupe", SnapshotFilter(), upload=upload_via(inference))
    # batch_h t0-t2 repeat batch_g's examples; h t3 (the starred prediction) differs from g t3,
    # whose latest annotation changed the urgency.
    assert snap.duplicates_removed == 3
    assert snap.training_examples == 5

    # The annotation date range.
    later = time.time() + 3600
    with pytest.raises(FailedPrecondition):
        cur.snapshots.create(
            "p1", "later", SnapshotFilter(start_time=later), upload=upload_via(inference)
        )
    ranged = cur.snapshots.create(
        "p1",
        "ranged",
        SnapshotFilter(start_time=later - 7200, end_time=later),
        upload=upload_via(inference),
    )
    assert ranged.training_examples == 5
