"""Crashes, graceful stops and several runners, with real service processes and real vLLM engines.

Each process here loads its own engine (≈ 20-30 s on CPU with enforce_eager), so the scenarios
are few and each checks several promises at once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import InferenceClient, InferenceProcess, batch_line, health_status, wait_until

from loomstack_inference.engine_processes import stray_engine_processes, wait_gone
from loomstack_inference.tables import results, shards

pytestmark = pytest.mark.engine


def _lines(n: int, max_tokens: int) -> list[dict[str, object]]:
    return [
        batch_line(
            f"req-{i:04d}",
            f"Write one sentence about the number {i}.",
            max_tokens=max_tokens,
            temperature=0,
            ignore_eos=True,
        )
        for i in range(n)
    ]


def _assert_exactly_once(client: InferenceClient, batch_id: str, n: int) -> None:
    batch = client.get_batch(batch_id)
    assert client.status(batch_id) == "BATCH_STATUS_COMPLETED"
    out = [json.loads(x) for x in client.content(batch.output_file_id).splitlines()]
    ids = [o["custom_id"] for o in out]
    assert len(ids) == len(set(ids)) == n, "every custom_id exactly once"
    assert set(ids) == {f"req-{i:04d}" for i in range(n)}
    assert batch.request_counts.completed == n and batch.request_counts.failed == 0
    assert not batch.error_file_id


@pytest.mark.postgres
def test_two_runners_share_a_batch_survive_kill9_and_restart(tmp_path: Path, pg_url: str) -> None:
    """Two engines on one PostgreSQL share one batch's shards; one is killed with SIGKILL
    mid-batch (its process alone, as `kill -9` does: its engine processes die with it), the
    other re-claims its shard when the lease expires, the killed one restarts, and the batch
    completes with exactly one output line per custom_id."""
    env = {
        "LOOMSTACK_INFERENCE_DATABASE_URL": pg_url,
        "LOOMSTACK_INFERENCE_SHARD_LINES": "25",
        "LOOMSTACK_INFERENCE_LEASE_SECONDS": "8",
        "LOOMSTACK_INFERENCE_MAX_INFLIGHT": "16",
    }
    a = InferenceProcess(
        tmp_path / "a", env=env | {"LOOMSTACK_INFERENCE_ENGINE_ID": "node-a"}, name="a"
    )
    b = InferenceProcess(
        tmp_path / "b", env=env | {"LOOMSTACK_INFERENCE_ENGINE_ID": "node-b"}, name="b"
    )
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        a.start()
        b.start()
        a.wait_ready()
        b.wait_ready()
        client = InferenceClient(a.address)
        n = 300
        batch_id = client.create_batch(_lines(n, 24)).id

        def runners_with_results() -> set[str]:
            with engine.connect() as conn:
                return {
                    r.runner.split(":")[0]
                    for r in conn.execute(
                        sa.select(results.c.runner).where(results.c.batch_id == batch_id).distinct()
                    )
                }

        wait_until(
            lambda: runners_with_results() == {"node-a", "node-b"},
            240,
            0.5,
            "both runners to commit results",
        )
        with engine.connect() as conn:
            held = (
                conn.execute(
                    sa.select(shards.c.id).where(
                        shards.c.lease_owner.like("node-a:%"), shards.c.status == "leased"
                    )
                )
                .scalars()
                .all()
            )
        assert held, "node-a holds a shard when it is killed"
        engines = a.kill9()
        killed_at = time.monotonic()
        # vLLM's EngineCore and Worker of node-a die with it, instead of running on as orphans
        # that hold the model's memory (a GPU's, on a GPU node).
        assert engines, "node-a ran its engine in processes of its own (two on CPU)"
        assert wait_gone(engines, 30) == [], "no engine process of node-a is left"
        assert stray_engine_processes(a.home) == []

        def reclaimed() -> bool:
            with engine.connect() as conn:
                owners = conn.execute(
                    sa.select(shards.c.lease_owner, shards.c.status).where(shards.c.id.in_(held))
                ).all()
            return all(
                o.status == "done" or (o.lease_owner or "").startswith("node-b") for o in owners
            )

        wait_until(reclaimed, 60, 0.25, "node-b to re-claim node-a's shards")
        assert time.monotonic() - killed_at < 30, "lease re-claimed within 30 s"
        client.close()
        client = InferenceClient(b.address)
        a.start()  # the same engine id restarts and joins again
        wait_until(
            lambda: client.status(batch_id) == "BATCH_STATUS_COMPLETED", 400, 1.0, "completion"
        )
        _assert_exactly_once(client, batch_id, n)
        with engine.connect() as conn:
            dupes = conn.execute(
                sa.text(
                    "SELECT custom_id FROM results WHERE batch_id = :b"
                    " GROUP BY custom_id HAVING count(*) > 1"
                ),
                {"b": batch_id},
            ).all()
        assert dupes == []
        assert runners_with_results() >= {"node-a", "node-b"}
        client.close()
    finally:
        for proc in (a, b):
            if proc.proc is not None:
                proc.terminate(30)
        engine.dispose()


def test_sigterm_drains_releases_lease_and_resumes(tmp_path: Path) -> None:
    """SIGTERM mid-batch: readiness goes NOT_SERVING while the server still answers, an online
    request in flight finishes, the lease is released, and the next start resumes the batch."""
    env = {
        "LOOMSTACK_INFERENCE_SHARD_LINES": "100",
        "LOOMSTACK_INFERENCE_ENGINE_ID": "solo",
        "LOOMSTACK_INFERENCE_GRACE_SECONDS": "20",
        "LOOMSTACK_INFERENCE_MAX_INFLIGHT": "32",
    }
    proc = InferenceProcess(tmp_path / "s", env=env, name="s")
    try:
        _sigterm_scenario(proc)
    finally:
        proc.terminate(30)


def _sigterm_scenario(proc: InferenceProcess) -> None:
    proc.start().wait_ready()
    client = InferenceClient(proc.address)
    n = 300
    batch_id = client.create_batch(_lines(n, 48)).id
    wait_until(
        lambda: client.get_batch(batch_id).request_counts.completed >= 20, 240, 0.3, "progress"
    )

    seen: list[str] = []
    stop_polling = threading.Event()

    def poll() -> None:
        while not stop_polling.is_set():
            status = health_status(proc.address, "readiness", timeout=0.5)
            if not seen or seen[-1] != status:
                seen.append(status)
            time.sleep(0.02)

    from loomstack.inference.v1 import chat_pb2

    chat_result: dict[str, object] = {}

    def chat() -> None:
        body = {
            "model": "SmolLM2-135M-Instruct",
            "max_tokens": 48,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to twenty."}],
        }
        reply = client.chat.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(request_json=json.dumps(body).encode()),
            metadata=client.metadata,
            timeout=60,
        )
        chat_result["body"] = json.loads(reply.response_json)

    poller = threading.Thread(target=poll)
    poller.start()
    chatter = threading.Thread(target=chat)
    chatter.start()
    time.sleep(0.3)  # let the online request reach the engine before the signal
    code = proc.terminate(90)
    chatter.join(30)
    stop_polling.set()
    poller.join()
    assert code == 0, proc.log_tail()
    assert seen[0] == "SERVING" and "NOT_SERVING" in seen, seen
    # Readiness drops while the server still answers; only then does it go away.
    assert "UNREACHABLE" not in seen[: seen.index("NOT_SERVING")], seen
    assert chat_result["body"]["usage"]["completion_tokens"] == 48, "in-flight RPC finished"  # type: ignore[index]

    client.close()
    # Nothing is leased after a graceful stop: the next start resumes at once.
    from loomstack_kit.database import create_db_engine

    engine = create_db_engine(f"sqlite:///{proc.home / 'inference.db'}")
    with engine.connect() as conn:
        leased = conn.execute(
            sa.select(sa.func.count()).where(shards.c.status == "leased")
        ).scalar_one()
        done_before = conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one()
    assert leased == 0
    assert 0 < done_before < n
    proc.start().wait_ready()
    client = InferenceClient(proc.address)
    wait_until(lambda: client.status(batch_id) == "BATCH_STATUS_COMPLETED", 300, 1.0, "completion")
    _assert_exactly_once(client, batch_id, n)
    client.close()
    proc.terminate()
    engine.dispose()
