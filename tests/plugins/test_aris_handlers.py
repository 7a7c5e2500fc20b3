"""The Aris result handlers, the VICTORY → gold star sync and the exports, against the real
migrated database (SQLite and PostgreSQL) and a stand-in curation context."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from aris_support import (
    COMPLETED,
    CREATED,
    LABEL_STUDIO_DOWN,
    CurationContextStandIn,
    batch_event,
    candidate_answer,
    deliver,
    gold_event,
    meta,
    run_batch,
)
from sqlalchemy.exc import OperationalError

from loomstack_aris.conquests import Annotation, ConquestStore, NewConquest
from loomstack_aris.examples import ARISTOTLE_EXPORTER, icl_examples
from loomstack_aris.handlers import (
    gold_to_victory,
    import_results,
    parse_conquest,
)
from loomstack_aris.plugin import plugin
from loomstack_aris.terms import ConquestResult, ConquestStatus
from loomstack_aris.victories import VictorySync
from loomstack_kit.database import create_db_engine, is_sqlite
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.plugins import ExportRequest


def conquest(store: ConquestStore, project: str = "p1", type: str = "CANDIDATE", **kw: str) -> str:
    new = NewConquest(
        type=type,
        title=kw.get("title", "Evaluate Ada"),
        philosopher=kw.get("philosopher", "socrates@example.com"),
        domain=kw.get("domain", "example.com"),
    )
    return store.create(project, new).id


def rating_rows(host: CurationContextStandIn) -> list[sa.Row]:
    with host.database.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM aris_ml_analysis_rating")).all()


# ---- parse_conquest ---------------------------------------------------------------------------


def test_parse_links_the_batch_and_starts_the_analysis(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    parse_conquest(batch_event(CREATED, "p1", "batch_1", meta(cid)), host)
    found = store.get("p1", cid)
    assert found.status is ConquestStatus.ANALYZING and found.batch_id == "batch_1"
    assert found.started_at
    # a replay changes nothing
    parse_conquest(batch_event(CREATED, "p1", "batch_1", meta(cid)), host)
    assert store.get("p1", cid).started_at == found.started_at


def test_parse_records_an_unknown_conquest_without_raising(
    store: ConquestStore, host: CurationContextStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    mine = conquest(store, "p1")
    theirs = conquest(store, "p2")
    unknown = "conq_" + "f" * 24
    with caplog.at_level(logging.WARNING, logger="loomstack_aris.handlers"):
        for cid in (unknown, theirs, "not-an-id"):
            event = batch_event(CREATED, "p1", "batch_x", meta(cid))
            parse_conquest(event, host)
            import_results(event, host)
    problems = [r for r in caplog.records if r.getMessage().startswith("batch metadata")]
    assert len(problems) == 3
    assert unknown in problems[0].problem  # type: ignore[attr-defined]
    # nothing else happened: the other project's conquest is untouched, nothing was queued
    assert store.get("p2", theirs).batch_id is None and store.get("p2", theirs).problem == ""
    assert store.get("p1", mine).batch_id is None
    assert host.queue_calls == []


def test_parse_records_a_type_mismatch_on_the_conquest(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store, type="CV_PARSING")
    parse_conquest(batch_event(CREATED, "p1", "batch_2", meta(cid, "CANDIDATE")), host)
    found = store.get("p1", cid)
    assert "CANDIDATE" in found.problem and "CV_PARSING" in found.problem
    assert found.status is ConquestStatus.DRAFT and found.batch_id is None
    parse_conquest(batch_event(CREATED, "p1", "batch_3", meta(cid, "SORCERY")), host)
    assert "not a conquest type" in store.get("p1", cid).problem
    # right metadata this time: linked, and the problem is gone
    parse_conquest(batch_event(CREATED, "p1", "batch_4", meta(cid, "cv_parsing")), host)
    fixed = store.get("p1", cid)
    assert fixed.batch_id == "batch_4" and fixed.problem == ""


def test_batches_that_name_no_conquest_are_not_arises(host: CurationContextStandIn) -> None:
    for event in (
        batch_event(CREATED, "p1", "batch_5", {}),
        batch_event(COMPLETED, "p1", "batch_5", {"schema_type": "rate_answer"}, output_file_id="f"),
    ):
        deliver(event, host)
    assert host.queue_calls == []


# ---- import_results and record_analysis --------------------------------------------------------


def test_import_results_queues_once_with_the_types_schema(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    event = batch_event(COMPLETED, "p1", "batch_6", meta(cid), output_file_id="file-out")
    import_results(event, host)
    import_results(event, host)  # delivered again
    assert host.queued == {"batch_6": "aris.candidate"}
    # a batch that names its schema_type was queued by curation's own import
    other = conquest(store, type="EMAIL_RESPONSE")
    named = meta(other, "EMAIL_RESPONSE", schema_type="aris.email_response")
    import_results(batch_event(COMPLETED, "p1", "batch_7", named, output_file_id="f"), host)
    assert host.queued == {"batch_6": "aris.candidate"}
    assert [c for c in host.queue_calls if c[0] == "batch_7"] == []


def test_record_analysis_stores_prompts_and_answers(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_8", [candidate_answer(), None])
    found = store.get("p1", cid)
    assert found.status is ConquestStatus.COMPLETED and found.completed_at
    assert [p["custom_id"] for p in found.prompts] == ["batch_8-0", "batch_8-1"]
    assert found.prompts[0]["messages"][0]["role"] == "user"
    assert found.responses[0]["content"] == candidate_answer()
    assert found.responses[1]["content"] is None and "max_tokens" in found.responses[1]["error"]
    # replayed: the same state
    run_batch(host, cid, "batch_8", [candidate_answer(), None])
    again = store.get("p1", cid)
    assert again.prompts == found.prompts and again.responses == found.responses
    assert again.completed_at == found.completed_at


def test_a_batch_of_only_failures_fails_the_conquest(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_9", [None, None])
    assert store.get("p1", cid).status is ConquestStatus.FAILED


# ---- gold star → VICTORY ------------------------------------------------------------------------


def test_a_gold_star_delivered_twice_is_one_victory_and_one_rating(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_10", [candidate_answer()])
    event = gold_event("p1", "batch_10", 41)
    gold_to_victory(event, host)
    gold_to_victory(event, host)
    found = store.get("p1", cid)
    assert found.result is ConquestResult.VICTORY
    assert found.evaluated_by == "label_studio" and found.evaluated_at == event.created_at
    assert not found.gold_sync_pending
    [row] = store.ratings_of("p1", cid)
    assert row.is_gold_star and row.ls_task_id == 41 and row.ls_annotation_id == 900
    assert row.philosopher == "socrates@example.com" and row.analysis_type == "CANDIDATE"
    assert host.set_gold_calls == []  # never: that is why no loop can start
    # the star taken away: the row unstarred, the verdict stays
    gold_to_victory(gold_event("p1", "batch_10", 41, gold=False), host)
    assert not store.ratings_of("p1", cid)[0].is_gold_star
    assert store.get("p1", cid).result is ConquestResult.VICTORY
    # another project's gold star on a batch of the same id touches nothing here
    gold_to_victory(gold_event("p2", "batch_10", 41), host)
    assert len(rating_rows(host)) == 1


# ---- VICTORY → gold star ------------------------------------------------------------------------


def test_victory_gives_the_batchs_tasks_the_gold_star(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_11", [candidate_answer(), candidate_answer("Yes")])
    host.import_tasks("p1", "batch_11", [51, 52])
    won = VictorySync(store, host).set_result("p1", cid, "VICTORY", evaluated_by="ari@example.com")
    assert host.set_gold_calls == [("p1", [51, 52], True)]
    assert won.result is ConquestResult.VICTORY and not won.gold_sync_pending


def test_the_gold_set_event_a_victory_causes_makes_no_loop(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_12", [candidate_answer()])
    host.import_tasks("p1", "batch_12", [61])
    VictorySync(store, host).set_result("p1", cid, "VICTORY", evaluated_by="ari@example.com")
    [published] = host.published
    assert published.data["origin"] == "plugin:aris"
    for _ in range(2):  # the feed event, delivered twice
        deliver(published, host)
    assert host.set_gold_calls == [("p1", [61], True)]  # still the one call
    found = store.get("p1", cid)
    assert found.evaluated_by == "ari@example.com"  # the person's verdict, not the echo's
    [row] = store.ratings_of("p1", cid)
    assert row.is_gold_star and row.ls_task_id == 61
    # a second pass has nothing to do either
    assert VictorySync(store, host).sync_pending("p1").synced == 0
    assert len(host.set_gold_calls) == 1


def test_a_failed_gold_sync_stays_pending_and_the_reconcile_retries_it(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_13", [candidate_answer()])
    host.import_tasks("p1", "batch_13", [71])
    host.set_gold_error = LABEL_STUDIO_DOWN
    sync = VictorySync(store, host)
    won = sync.set_result("p1", cid, "VICTORY")
    assert won.result is ConquestResult.VICTORY and won.gold_sync_pending
    counts = sync.sync_pending(None)
    assert (counts.synced, counts.failed) == (0, 1)
    assert store.get("p1", cid).gold_sync_pending
    host.set_gold_error = None
    counts = sync.sync_pending(None)
    assert (counts.synced, counts.pending) == (1, 0)
    assert not store.get("p1", cid).gold_sync_pending
    assert host.set_gold_calls == [("p1", [71], True)] * 3


def test_a_victory_before_the_import_waits_for_the_tasks(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_14", [candidate_answer()])
    sync = VictorySync(store, host)
    assert sync.set_result("p1", cid, "VICTORY").gold_sync_pending
    assert sync.sync_pending("p1").waiting == 1 and host.set_gold_calls == []
    host.import_tasks("p1", "batch_14", [81])
    assert sync.sync_pending("p1").synced == 1
    assert host.set_gold_calls == [("p1", [81], True)]


async def test_the_reconcile_loop_retries_on_its_own(
    store: ConquestStore, host: CurationContextStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_15", [candidate_answer()])
    host.import_tasks("p1", "batch_15", [91])
    host.set_gold_error = LABEL_STUDIO_DOWN
    assert VictorySync(store, host).set_result("p1", cid, "VICTORY").gold_sync_pending
    host.set_gold_error = None
    monkeypatch.setenv("LOOMSTACK_ARIS_RECONCILE_SECONDS", "0.05")
    assert plugin.loops is not None
    [loop] = plugin.loops(host)
    task = asyncio.ensure_future(loop)
    try:
        for _ in range(100):
            if not store.get("p1", cid).gold_sync_pending:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert not store.get("p1", cid).gold_sync_pending
    monkeypatch.setenv("LOOMSTACK_ARIS_RECONCILE_SECONDS", "soon")
    with pytest.raises(ValueError, match="LOOMSTACK_ARIS_RECONCILE_SECONDS"):
        plugin.loops(host)


# ---- the database going away --------------------------------------------------------------------


def test_a_handler_raises_while_the_database_is_unreachable(
    aris_url: str, store: ConquestStore, host: CurationContextStandIn, tmp_path: Path
) -> None:
    cid = conquest(store)
    run_batch(host, cid, "batch_16", [candidate_answer()])
    event = gold_event("p1", "batch_16", 101)
    real = host.database
    # the database server is gone: nothing listens there any more
    host.database = create_db_engine(
        "postgresql://postgres@127.0.0.1:9/aristotle?connect_timeout=2"
    )
    try:
        with pytest.raises(OperationalError):
            gold_to_victory(event, host)
        with pytest.raises(OperationalError):
            parse_conquest(batch_event(CREATED, "p1", "batch_16", meta(cid)), host)
    finally:
        host.database.dispose()
        host.database = real
    assert store.get("p1", cid).result is ConquestResult.PENDING
    # back: the host replays the event (at least once): exactly one row
    gold_to_victory(event, host)
    gold_to_victory(event, host)
    assert len(rating_rows(host)) == 1
    assert store.get("p1", cid).result is ConquestResult.VICTORY


def test_a_failure_in_the_middle_of_a_handler_leaves_nothing_half_written(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    """The rating table refuses writes (a trigger, on either database) after the conquest's
    VICTORY was written in the same transaction: neither stays."""
    cid = conquest(store)
    run_batch(host, cid, "batch_17", [candidate_answer()])
    engine = host.database
    with engine.begin() as conn:
        if is_sqlite(engine):
            conn.exec_driver_sql(
                "CREATE TRIGGER aris_refuse BEFORE INSERT ON aris_ml_analysis_rating "
                "BEGIN SELECT RAISE(ABORT, 'rating table unavailable'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION aris_refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'rating table unavailable'; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER aris_refuse BEFORE INSERT ON aris_ml_analysis_rating "
                "FOR EACH ROW EXECUTE FUNCTION aris_refuse()"
            )
    event = gold_event("p1", "batch_17", 111)
    with pytest.raises(sa.exc.DBAPIError, match="rating table unavailable"):
        gold_to_victory(event, host)
    found = store.get("p1", cid)
    assert found.result is ConquestResult.PENDING and found.evaluated_by == ""
    assert rating_rows(host) == []
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER aris_refuse"
            if is_sqlite(engine)
            else "DROP TRIGGER aris_refuse ON aris_ml_analysis_rating"
        )
    gold_to_victory(event, host)
    gold_to_victory(event, host)
    assert len(rating_rows(host)) == 1
    assert store.get("p1", cid).result is ConquestResult.VICTORY


# ---- the exports -------------------------------------------------------------------------------


def _won(
    store: ConquestStore, host: CurationContextStandIn, batch_id: str, *, answer: str, **kw: str
) -> str:
    cid = conquest(store, **kw)
    meta_type = kw.get("type", "CANDIDATE")
    run_batch(host, cid, batch_id, [answer], type=meta_type)
    store.set_result("p1", cid, "VICTORY")
    return cid


def export(host: CurationContextStandIn, schema_id: str = "", limit: int = 0, **options: str):  # type: ignore[no-untyped-def]
    request = ExportRequest(
        project="p1", schema_id=schema_id, gold_only=False, limit=limit, options=options
    )
    return list(ARISTOTLE_EXPORTER.export(request, host))


def test_the_aristotle_exporter_takes_victories_by_filter(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    a = _won(store, host, "b_a", answer="A")
    _won(store, host, "b_b", answer="B", philosopher="plato@example.com")
    _won(store, host, "b_c", answer="C", domain="other.org")
    _won(store, host, "b_d", answer="D", type="EMAIL_RESPONSE")
    opted_out = _won(store, host, "b_e", answer="E")
    store.annotate("p1", opted_out, Annotation(include_in_training=False))
    lost = conquest(store)
    run_batch(host, lost, "b_f", ["F"])
    store.set_result("p1", lost, "DEFEAT")

    def answers(examples: list[list[dict[str, str]]]) -> list[str]:
        return [e[-1]["content"] for e in examples]

    everything = export(host)
    assert answers(everything) == ["A", "B", "C", "D"]
    first = everything[0]
    assert first[0]["role"] == "user" and "Ada Lovelace" in first[0]["content"]
    assert first[-1] == {"role": "assistant", "content": "A"}
    assert answers(export(host, "aris.candidate")) == ["A", "B", "C"]
    assert answers(export(host, conquest_type="email_response")) == ["D"]
    assert answers(export(host, user_email="plato@example.com")) == ["B"]
    assert answers(export(host, domain="other.org")) == ["C"]
    assert answers(export(host, limit=2)) == ["A", "B"]
    with pytest.raises(InvalidArgument) as conflict:
        export(host, "aris.candidate", conquest_type="EMAIL_RESPONSE")
    assert conflict.value.param == "conquest_type"
    with pytest.raises(InvalidArgument) as foreign:
        export(host, "rate_answer")
    assert foreign.value.param == "schema_id"
    assert a  # the first conquest's example leads: oldest first


def test_eidos_takes_only_hand_picked_victories(
    store: ConquestStore, host: CurationContextStandIn
) -> None:
    _won(store, host, "e_a", answer="not picked")
    picked = _won(store, host, "e_b", answer="picked on the conquest")
    store.set_result("p1", picked, "VICTORY", use_as_example=True)
    sample = _won(store, host, "e_c", answer="picked on a rating", domain="other.org")
    store.annotate("p1", sample, Annotation(use_as_sample_response=True))
    _won(store, host, "e_d", answer="another user's", philosopher="plato@example.com")

    found = icl_examples(store, "p1")
    assert [e.messages[-1]["content"] for e in found] == [
        "picked on a rating",
        "picked on the conquest",
    ]
    assert [e.conquest_id for e in icl_examples(store, "p1", domain="other.org")] == [sample]
    assert icl_examples(store, "p1", philosopher="plato@example.com") == []
    assert icl_examples(store, "p1", conquest_type="CUSTOM") == []
    assert len(icl_examples(store, "p1", limit=1)) == 1
    [text] = icl_examples(store, "p1", fmt="text", limit=1)
    assert text.messages == []
    assert text.text.startswith("Input:\nCandidate: Ada Lovelace")
    assert text.text.endswith("Output:\npicked on a rating")
    assert icl_examples(store, "p2") == []
    with pytest.raises(InvalidArgument) as bad:
        icl_examples(store, "p1", fmt="xml")
    assert bad.value.param == "format"
    assert json.dumps(found[0].messages)  # plain JSON


@pytest.mark.parametrize(
    ("kind", "status", "problem"),
    [
        ("batch.cancelled", ConquestStatus.CANCELLED, "was cancelled"),
        ("batch.expired", ConquestStatus.FAILED, "expired before it finished"),
    ],
)
def test_a_batch_that_ends_early_ends_its_conquest(
    store: ConquestStore,
    host: CurationContextStandIn,
    kind: str,
    status: ConquestStatus,
    problem: str,
) -> None:
    cid = conquest(store)
    event = batch_event(kind, "p1", "batch_e", meta(cid))
    deliver(event, host)
    found = store.get("p1", cid)
    assert found.status is status and found.batch_id == "batch_e"
    assert problem in found.problem and found.completed_at
    deliver(event, host)  # replayed: the same
    assert store.get("p1", cid).completed_at == found.completed_at
    # A finished conquest keeps its status when a stale event arrives.
    done = conquest(store)
    run_batch(host, done, "batch_ok", [candidate_answer()])
    deliver(batch_event(kind, "p1", "batch_ok", meta(done)), host)
    assert store.get("p1", done).status is ConquestStatus.COMPLETED
