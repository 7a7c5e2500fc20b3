"""The shard lease queue and the batch state machine, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator

import orjson
import sqlalchemy as sa
from support import MODEL_NAME, batch_line

from loomstack_inference.leases import LeaseQueue, ResultRow, release_previous_leases
from loomstack_inference.tables import batches, results, shards


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _batch(domain, n: int, priority: int = 0, project: str = "p1") -> str:  # type: ignore[no-untyped-def]
    data = b"".join(json.dumps(batch_line(f"c{i}", f"q{i}")).encode() + b"\n" for i in range(n))
    rec = await domain.files.upload(project, "in.jsonl", "batch", _chunks(data))
    view = domain.batches.create(
        project,
        input_file_id=rec.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={},
        priority=priority,
    )
    return view.id


def _rows(queue: LeaseQueue, lease, ok=lambda line: True) -> list[ResultRow]:  # type: ignore[no-untyped-def]
    return [
        ResultRow(
            p.line_no,
            p.custom_id,
            ok(p.line_no),
            orjson.dumps({"custom_id": p.custom_id, "line": p.line_no}).decode(),
            3,
            0,
            5,
        )
        for p in queue.pending_lines(lease)
    ]


def _run_all(domain, queue: LeaseQueue, model: str, ok=lambda line: True) -> None:  # type: ignore[no-untyped-def]
    while (lease := queue.claim([model])) is not None:
        assert queue.commit(lease, _rows(queue, lease, ok)).still_owned
        queue.complete(lease)
        domain.batches.try_finalize(lease.batch_id)


async def test_priority_then_fifo(domain) -> None:  # type: ignore[no-untyped-def]
    first = await _batch(domain, 2)
    low = await _batch(domain, 2, priority=-1)
    second = await _batch(domain, 2)
    high = await _batch(domain, 2, priority=1)
    queue = LeaseQueue(domain.engine, "r1", 30)
    order = []
    while (lease := queue.claim(["SmolLM2-135M-Instruct"])) is not None:
        order.append(lease.batch_id)
    assert order == [high, first, second, low]
    assert queue.claim(["other-model"]) is None


async def test_concurrent_claims_never_share_a_shard(domain) -> None:  # type: ignore[no-untyped-def]
    await _batch(domain, 40)  # 10 shards of 4
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(owner: str) -> None:
        queue = LeaseQueue(domain.engine, owner, 30)
        while (lease := queue.claim(["SmolLM2-135M-Instruct"])) is not None:
            with lock:
                claimed.append(lease.shard_id)

    threads = [threading.Thread(target=worker, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 10


async def test_complete_batch_writes_ordered_output_and_error_files(domain) -> None:  # type: ignore[no-untyped-def]
    batch_id = await _batch(domain, 10)
    queue = LeaseQueue(domain.engine, "r1", 30)
    _run_all(domain, queue, "SmolLM2-135M-Instruct", ok=lambda line: line % 3 != 0)
    view = domain.batches.get("p1", batch_id)
    assert view.status == "completed"
    assert (view.completed, view.failed) == (7, 3)
    assert (view.input_tokens, view.output_tokens) == (30, 50)
    out = b"".join(domain.files.read("p1", view.output_file_id)).decode().splitlines()
    err = b"".join(domain.files.read("p1", view.error_file_id)).decode().splitlines()
    assert [json.loads(x)["line"] for x in out] == [1, 2, 4, 5, 7, 8, 10]
    assert [json.loads(x)["line"] for x in err] == [3, 6, 9]
    assert domain.files.get("p1", view.output_file_id).purpose == "batch_output"


async def test_recommit_after_crash_is_exactly_once(domain) -> None:  # type: ignore[no-untyped-def]
    batch_id = await _batch(domain, 4)
    crashed = LeaseQueue(domain.engine, "engine-a:1", lease_seconds=0.5)
    lease = crashed.claim(["SmolLM2-135M-Instruct"])
    rows = _rows(crashed, lease)
    assert crashed.commit(lease, rows[:2]).still_owned  # two lines committed, then a crash
    await asyncio.sleep(0.6)  # the lease expires (0.5 s)
    survivor = LeaseQueue(domain.engine, "engine-b:1", 30)
    again = survivor.claim(["SmolLM2-135M-Instruct"])
    assert again is not None and again.shard_id == lease.shard_id
    assert [p.custom_id for p in survivor.pending_lines(again)] == ["c2", "c3"]
    # The crashed runner wakes up and commits late: it has lost the lease, and UNIQUE holds.
    assert not crashed.commit(lease, rows).still_owned
    assert survivor.commit(again, _rows(survivor, again)).still_owned
    survivor.complete(again)
    assert domain.batches.try_finalize(batch_id) == "completed"
    with domain.engine.connect() as conn:
        ids = [r.custom_id for r in conn.execute(sa.select(results.c.custom_id))]
    assert sorted(ids) == ["c0", "c1", "c2", "c3"]
    assert domain.batches.get("p1", batch_id).completed == 4


async def test_restart_with_same_engine_id_releases_its_leases(domain) -> None:  # type: ignore[no-untyped-def]
    await _batch(domain, 8)
    LeaseQueue(domain.engine, "pod-1:aaaa", 30).claim(["SmolLM2-135M-Instruct"])
    LeaseQueue(domain.engine, "pod-2:bbbb", 30).claim(["SmolLM2-135M-Instruct"])
    assert release_previous_leases(domain.engine, "pod-1") == 1
    with domain.engine.connect() as conn:
        owners = sorted(str(r.lease_owner) for r in conn.execute(sa.select(shards.c.lease_owner)))
    assert owners == ["None", "pod-2:bbbb"]


async def test_cancel_queued_batch_finalizes_without_any_runner(domain) -> None:  # type: ignore[no-untyped-def]
    batch_id = await _batch(domain, 6)
    view = domain.batches.cancel("p1", batch_id)
    assert view.status == "cancelled"
    assert view.times["cancelling_at"] and view.times["cancelled_at"]
    assert LeaseQueue(domain.engine, "r1", 30).claim(["SmolLM2-135M-Instruct"]) is None


async def test_cancel_running_batch_waits_for_the_lease_holder(domain) -> None:  # type: ignore[no-untyped-def]
    batch_id = await _batch(domain, 8)
    queue = LeaseQueue(domain.engine, "r1", 30)
    lease = queue.claim(["SmolLM2-135M-Instruct"])
    rows = _rows(queue, lease)
    queue.commit(lease, rows[:1])
    assert domain.batches.cancel("p1", batch_id).status == "cancelling"
    assert domain.batches.maintain() == []  # a live lease: not yet
    outcome = queue.commit(lease, rows[1:2])
    assert outcome.stop and outcome.still_owned
    queue.stop(lease)
    assert domain.batches.try_finalize(batch_id) == "cancelled"
    view = domain.batches.get("p1", batch_id)
    assert view.status == "cancelled" and view.completed == 2
    out = b"".join(domain.files.read("p1", view.output_file_id)).decode().splitlines()
    assert len(out) == 2


async def test_expired_batch_lists_unfinished_lines_in_error_file(domain) -> None:  # type: ignore[no-untyped-def]
    batch_id = await _batch(domain, 6)
    queue = LeaseQueue(domain.engine, "r1", 30)
    lease = queue.claim(["SmolLM2-135M-Instruct"])
    queue.commit(lease, _rows(queue, lease)[:3])
    queue.stop(lease)
    with domain.engine.begin() as conn:
        conn.execute(
            batches.update().where(batches.c.id == batch_id).values(expires_at=time.time() - 1)
        )
    assert domain.batches.maintain() == [(batch_id, "expired")]
    view = domain.batches.get("p1", batch_id)
    assert view.status == "expired" and view.completed == 3
    errors = [
        json.loads(x) for x in b"".join(domain.files.read("p1", view.error_file_id)).splitlines()
    ]
    assert [e["custom_id"] for e in errors] == ["c3", "c4", "c5"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


async def test_queue_position_and_estimates(domain) -> None:  # type: ignore[no-untyped-def]
    first = await _batch(domain, 8)
    second = await _batch(domain, 4)
    domain.registry.heartbeat(
        "e1",
        "127.0.0.1:1",
        ["SmolLM2-135M-Instruct"],
        ready=True,
        tokens_per_second=100,
        requests_per_second=4,
    )
    a, b = domain.batches.get("p1", first), domain.batches.get("p1", second)
    assert (a.queue_position, b.queue_position) == (0, 1)
    assert b.estimated_start_at is not None and b.estimated_finish_at is not None
    # 8 lines ahead at 4 lines/s: about 2 s until the second batch starts, 1 s more to finish.
    assert 1.5 < b.estimated_start_at - time.time() < 2.5
    assert 0.9 < b.estimated_finish_at - b.estimated_start_at < 1.1


async def test_projects_are_isolated(domain) -> None:  # type: ignore[no-untyped-def]
    mine = await _batch(domain, 1, project="p1")
    await _batch(domain, 1, project="p2")
    assert [v.id for v in domain.batches.list_batches("p1")[0]] == [mine]
    assert len(domain.batches.list_batches(None)[0]) == 2  # admin


async def test_list_pagination_newest_first(domain) -> None:  # type: ignore[no-untyped-def]
    ids = [await _batch(domain, 1) for _ in range(5)]
    page, more = domain.batches.list_batches("p1", limit=2)
    assert [v.id for v in page] == ids[::-1][:2] and more
    page2, more2 = domain.batches.list_batches("p1", limit=10, after=page[-1].id)
    assert [v.id for v in page2] == ids[::-1][2:] and not more2


async def test_finished_batches_appear_once_in_the_event_feed(domain) -> None:  # type: ignore[no-untyped-def]
    done = await _batch(domain, 2)
    cancelled = await _batch(domain, 2)
    domain.batches.cancel("p1", cancelled)
    _run_all(domain, LeaseQueue(domain.engine, "r1", 30), "SmolLM2-135M-Instruct")
    domain.batches.maintain()  # a second finalization attempt must not add events
    events = domain.batches.events(0, 10)
    assert [(kind, view.id) for _, kind, _, view in events] == [
        ("batch.cancelled", cancelled),
        ("batch.completed", done),
    ]
    assert events[1][3].completed == 2
    assert domain.batches.events(events[0][0], 10)[0][3].id == done  # the cursor
    assert domain.batches.events(events[1][0], 10) == []


async def test_creating_a_batch_parses_its_input_outside_the_write_lock(
    domain, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """While a batch's input is parsed, another writer (a runner committing results) gets the
    database at once: on SQLite the write lock is taken only to insert the parsed lines. The
    lines land whole and in order, also when the staged lines spill from memory to disk."""
    from loomstack_inference import batches as batches_module
    from loomstack_kit.database import write_transaction

    first = await _batch(domain, 3)
    queue = LeaseQueue(domain.engine, "runner-1", 60)
    lease = queue.claim([MODEL_NAME])
    assert lease is not None and lease.batch_id == first
    committed_during_parse: list[bool] = []
    real_parse = batches_module.parse_batch_input

    def parse_while_a_runner_commits(*args, **kwargs):  # type: ignore[no-untyped-def]
        for i, line in enumerate(real_parse(*args, **kwargs)):
            if i == 1:  # mid-parse: a runner commits, with no wait for a lock
                holder = threading.Thread(
                    target=lambda: committed_during_parse.append(
                        queue.commit(lease, _rows(queue, lease)).still_owned
                    )
                )
                holder.start()
                holder.join(10)
                assert not holder.is_alive(), "the runner's commit waited for the parse"
                with write_transaction(domain.engine) as conn:  # and any other writer
                    conn.execute(sa.select(1))
            yield line

    monkeypatch.setattr(batches_module, "parse_batch_input", parse_while_a_runner_commits)
    monkeypatch.setattr(batches_module, "STAGE_IN_MEMORY_BYTES", 64)  # spill to disk
    n = 40
    second = await _batch(domain, n)
    assert committed_during_parse == [True]
    with domain.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT line_no, custom_id, body_json FROM batch_requests "
                "WHERE batch_id = :b ORDER BY line_no"
            ),
            {"b": second},
        ).all()
    assert [r.custom_id for r in rows] == [f"c{i}" for i in range(n)]
    assert [json.loads(r.body_json)["messages"][0]["content"] for r in rows] == [
        f"q{i}" for i in range(n)
    ]
    assert domain.batches.get("p1", second).total == n
