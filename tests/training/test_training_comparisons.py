"""On-demand A/B comparisons: the domain store on SQLite and PostgreSQL, and a real comparison
of the base model against itself through the gateway (real inference batches on the CPU vLLM
engine), with votes, the win rate, bad inputs, and a service crash mid-comparison that the
restart reconciles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from loomstack.training.v1 import training_pb2, training_pb2_grpc
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from loomstack_training.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_training.batch_answers import Answer
from loomstack_training.comparison_file import ComparisonPrompt, parse_comparison_file
from loomstack_training.comparisons import Comparisons, VoteCounts
from support import MODEL_NAME, signed, wait_until
from training_support import GatewayProcess, TrainingProcess

CAPITAL = "What is the capital of France?"
PROMPTS: list[dict[str, Any]] = [
    {
        "messages": [
            {"role": "user", "content": CAPITAL},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2 plus 2?"},
            {"role": "assistant", "content": "2 plus 2 is 4."},
        ]
    },
    # No final assistant turn: a prompt to vote on, not scored.
    {"messages": [{"role": "user", "content": "Name a colour."}]},
]


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


# --- the plain domain modules -------------------------------------------------------------


def test_prompt_file_references_and_line_numbered_errors() -> None:
    prompts = parse_comparison_file(jsonl(PROMPTS), max_items=10)
    assert [p.line for p in prompts] == [1, 2, 3]
    assert prompts[0].reference == "The capital of France is Paris."
    assert [m["role"] for m in prompts[1].messages] == ["system", "user"]
    assert prompts[2].reference is None and prompts[2].messages == PROMPTS[2]["messages"]
    bad = jsonl(
        [
            PROMPTS[0],
            "{broken",
            {"messages": [{"role": "robot", "content": "x"}]},
            {"messages": [{"role": "assistant", "content": "only an answer"}]},
            {"prompt": "p", "completion": "c"},
        ]
    )
    with pytest.raises(InvalidArgument) as info:
        parse_comparison_file(bad, max_items=10)
    message = info.value.message
    assert info.value.param == "input_file_id" and info.value.line == 2
    assert "line 2: not valid JSON" in message
    assert "line 3: messages[0].role is 'robot'" in message
    assert "line 4: nothing before the assistant turn" in message
    assert "line 5: expected an object with `messages`" in message
    with pytest.raises(InvalidArgument, match="at most 2"):
        parse_comparison_file(jsonl(PROMPTS), max_items=2)
    with pytest.raises(InvalidArgument, match="no prompts"):
        parse_comparison_file(b"\n\n", max_items=2)


def _store(url: str) -> Comparisons:
    migrate(url, MIGRATIONS, VERSION_TABLE)
    return Comparisons(create_db_engine(url))


def _prompts() -> list[ComparisonPrompt]:
    return parse_comparison_file(jsonl(PROMPTS), max_items=10)


def _create(store: Comparisons, project: str = "p") -> str:
    return store.create(
        project=project,
        model_a="base",
        model_b="ft:base::x",
        input_file_id="file-1",
        max_tokens=8,
        metadata={"k": "v"},
        prompts=_prompts(),
    ).id


def test_comparison_state_machine_scores_and_votes(db_url: str) -> None:
    store = _store(db_url)
    cid = _create(store)
    created = store.get("p", cid)
    assert created.status == "queued" and created.item_count == 3
    assert created.scored_item_count == 2 and created.scores_a is None
    with pytest.raises(FailedPrecondition):
        store.vote("p", cid, 0, winner="a")
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == cid and claimed.status == "running"
    assert claimed.attempts == 1 and store.claim_next() is None
    assert len(store.prompts(cid)) == 3
    answers_a = [Answer("Paris."), Answer("4"), Answer("Blue.")]
    answers_b = [Answer("The capital of France is Paris."), Answer("", "too long"), Answer("Red")]
    assert store.complete(cid, answers_a, answers_b)
    assert not store.fail(cid, "late", "a final comparison stays final")
    done = store.get("p", cid)
    assert done.status == "completed" and done.finished_at is not None
    assert done.scores_a is not None and done.scores_b is not None
    assert done.scores_b.exact_match == pytest.approx(0.5)  # 1 of the 2 scored items
    assert done.scores_a.exact_match == 0.0
    assert 0 < done.scores_a.token_overlap < done.scores_b.token_overlap
    assert done.votes == VoteCounts() and done.votes.win_rate is None

    items, more = store.items("p", cid, limit=2)
    assert [i.index for i in items] == [0, 1] and more
    assert items[0].scores_b is not None and items[0].scores_b.exact_match == 1.0
    assert items[1].error_b == "too long" and items[1].answer_b == ""
    rest, more = store.items("p", cid, limit=2, after=1)
    assert [i.index for i in rest] == [2] and not more
    assert rest[0].reference is None and rest[0].scores_a is None

    store.vote("p", cid, 0, winner="a", voter="alice")
    store.vote("p", cid, 0, winner="b", voter="alice", comment="changed my mind")  # replaces
    store.vote("p", cid, 1, winner="a", voter="bob")
    store.vote("p", cid, 2, winner="tie")
    store.vote("p", cid, 2, winner="b")  # anonymous votes all count
    votes = store.get("p", cid).votes
    assert votes == VoteCounts(a=1, b=2, tie=1)
    assert votes.win_rate == pytest.approx(2 / 3)
    items, _ = store.items("p", cid)
    assert [i.votes for i in items] == [VoteCounts(b=1), VoteCounts(a=1), VoteCounts(b=1, tie=1)]

    with pytest.raises(InvalidArgument) as bad_winner:
        store.vote("p", cid, 0, winner="c")
    assert bad_winner.value.param == "winner"
    with pytest.raises(NotFound) as unknown_item:
        store.vote("p", cid, 3, winner="a")
    assert unknown_item.value.param == "index"
    with pytest.raises(InvalidArgument):
        store.vote("p", cid, 0, winner="a", voter="x" * 129)
    # Another project sees nothing of it.
    with pytest.raises(NotFound):
        store.get("other", cid)
    with pytest.raises(NotFound):
        store.vote("other", cid, 0, winner="a")
    assert store.list_comparisons("other")[0] == []
    other = _create(store)
    listed, more = store.list_comparisons(None)
    assert [c.id for c in listed] == [other, cid] and not more  # newest first
    assert [c.votes for c in listed] == [VoteCounts(), VoteCounts(a=1, b=2, tie=1)]
    page, more = store.list_comparisons("p", limit=1)
    assert [c.id for c in page] == [other] and more
    assert [c.id for c in store.list_comparisons("p", after=other)[0]] == [cid]


def test_reconcile_requeues_then_fails_an_interrupted_comparison(db_url: str) -> None:
    store = _store(db_url)
    cid, waiting = _create(store), _create(store)
    assert store.claim_next() is not None  # the older one, now running
    # A graceful stop re-queues it without counting the attempt.
    assert store.requeue(cid, interrupted=False)
    assert store.get("p", cid).attempts == 0
    assert store.claim_next().id == cid  # type: ignore[union-attr]
    # A crash: the restart re-queues it (attempt 1 of 2).
    assert store.reconcile(max_attempts=2) == ([cid], [])
    assert store.get("p", cid).status == "queued"
    assert store.claim_next().id == cid  # type: ignore[union-attr]
    # A second crash while running it again: failed, with the reason.
    assert store.reconcile(max_attempts=2) == ([], [cid])
    failed = store.get("p", cid)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["code"] == "service_restarted"
    assert not store.complete(cid, [Answer("x")] * 3, [Answer("y")] * 3)
    assert store.items("p", cid)[0][0].answer_a == ""  # nothing stored after the failure
    assert store.get("p", waiting).status == "queued"


# --- the real service ---------------------------------------------------------------------


@pytest.fixture()
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """curl's view of the gateway: the API key, JSON in and out."""
    with httpx.Client(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {gateway.KEY}"},
        timeout=300,
    ) as client:
        yield client


def _upload(gateway: GatewayProcess, lines: list[Any], purpose: str = "fine-tune") -> str:
    return str(gateway.client().files.create(file=("p.jsonl", jsonl(lines)), purpose=purpose).id)


def _finished(http: httpx.Client, cid: str, timeout: float = 600) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"/v1/comparisons/{cid}").json()
        return body if body["status"] in ("completed", "failed") else None

    result: dict[str, Any] = wait_until(done, timeout, 0.5, f"comparison {cid} to finish")
    return result


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_comparison_through_the_gateway_with_votes_and_win_rate(
    gateway: GatewayProcess, http: httpx.Client
) -> None:
    """The base model against itself on three prompts (two with references): both answer
    every prompt as real batches, the answers are scored, votes give the win rate."""
    file_id = _upload(gateway, PROMPTS)
    created = http.post(
        "/v1/comparisons",
        json={
            "model_a": MODEL_NAME,
            "model_b": MODEL_NAME,
            "input_file_id": file_id,
            "max_tokens": 12,
            "metadata": {"purpose": "sanity"},
        },
    )
    assert created.status_code == 200, created.text
    comparison = created.json()
    cid = comparison["id"]
    assert cid.startswith("cmp-") and comparison["object"] == "comparison"
    assert comparison["status"] in ("queued", "running")
    assert comparison["item_count"] == 3 and comparison["scored_item_count"] == 2
    assert comparison["win_rate"] is None and comparison["metadata"] == {"purpose": "sanity"}

    # Not completed yet: no votes.
    early = http.post(f"/v1/comparisons/{cid}/items/0/votes", json={"winner": "a"})
    if comparison["status"] != "completed":
        assert _error(early, 400)["code"] == "comparison_not_completed"

    done = _finished(http, cid)
    assert done["status"] == "completed", done["error"]
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    scores = done["scores"]
    # The same model, greedy, on the same prompts: the same scores.
    assert scores["model_a"] == pytest.approx(scores["model_b"])
    assert 0 <= scores["model_a"]["token_overlap"] <= 1

    page = http.get(f"/v1/comparisons/{cid}/items", params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [i["index"] for i in page["data"]] == [0, 1] and page["last_id"] == 1
    rest = http.get(f"/v1/comparisons/{cid}/items", params={"after": 1}).json()
    assert [i["index"] for i in rest["data"]] == [2] and rest["has_more"] is False
    items = page["data"] + rest["data"]
    assert all(i["answer_a"] and i["answer_b"] for i in items), items
    assert all(i["error_a"] is None and i["error_b"] is None for i in items)
    assert items[0]["messages"] == [{"role": "user", "content": CAPITAL}]
    assert items[0]["reference"] == "The capital of France is Paris."
    assert items[0]["scores"] is not None and items[2]["scores"] is None
    assert items[2]["reference"] is None and items[2]["line"] == 3

    votes = [
        (0, {"winner": "b", "voter": "alice", "comment": "more precise"}),
        (1, {"winner": "a", "voter": "bob"}),
        (1, {"winner": "b", "voter": "carol"}),
        (2, {"winner": "tie"}),
    ]
    for index, body in votes:
        reply = http.post(f"/v1/comparisons/{cid}/items/{index}/votes", json=body)
        assert reply.status_code == 200, reply.text
        vote = reply.json()
        assert vote["object"] == "comparison.vote" and vote["winner"] == body["winner"]
        assert vote["index"] == index and vote["id"].startswith("vote-")
    voted = http.get(f"/v1/comparisons/{cid}").json()
    assert voted["votes"] == {"a": 1, "b": 2, "tie": 1}
    assert voted["win_rate"] == pytest.approx(2 / 3)  # B / (A + B), ties left out
    items = http.get(f"/v1/comparisons/{cid}/items").json()["data"]
    assert [i["votes"] for i in items] == [
        {"a": 0, "b": 1, "tie": 0},
        {"a": 1, "b": 1, "tie": 0},
        {"a": 0, "b": 0, "tie": 1},
    ]
    listed = http.get("/v1/comparisons", params={"limit": 100}).json()
    assert cid in [c["id"] for c in listed["data"]] and listed["object"] == "list"

    # Bad votes: winner, item, comparison.
    bad = _error(http.post(f"/v1/comparisons/{cid}/items/0/votes", json={"winner": "c"}), 400)
    assert bad["param"] == "winner"
    missing = _error(http.post(f"/v1/comparisons/{cid}/items/7/votes", json={"winner": "a"}), 404)
    assert missing["param"] == "index" and "items are 0 to 2" in missing["message"]
    _error(http.post("/v1/comparisons/cmp-nope/items/0/votes", json={"winner": "a"}), 404)
    _error(http.get("/v1/comparisons/cmp-nope"), 404)


def test_bad_comparison_requests(gateway: GatewayProcess, http: httpx.Client) -> None:
    good = _upload(gateway, PROMPTS[:1])

    def refused(**body: Any) -> dict[str, Any]:
        request = {"model_a": MODEL_NAME, "model_b": MODEL_NAME, "input_file_id": good, **body}
        return _error(http.post("/v1/comparisons", json=request), 400)

    unknown = refused(model_b="no-such-model")
    assert unknown["param"] == "model_b" and "unknown model 'no-such-model'" in unknown["message"]
    assert refused(model_a="")["param"] == "model_a"
    assert refused(max_tokens=0)["param"] == "max_tokens"
    lines = refused(input_file_id=_upload(gateway, [PROMPTS[0], "{broken", {"messages": []}]))
    assert lines["param"] == "input_file_id" and lines["line"] == 2
    assert "line 2: not valid JSON" in lines["message"]
    assert "line 3: `messages` must be a non-empty list" in lines["message"]
    batch_line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}
    wrong_purpose = refused(input_file_id=_upload(gateway, [batch_line], purpose="batch"))
    assert (
        wrong_purpose["param"] == "input_file_id" and "purpose 'batch'" in wrong_purpose["message"]
    )
    missing = _error(
        http.post(
            "/v1/comparisons",
            json={"model_a": MODEL_NAME, "model_b": MODEL_NAME, "input_file_id": "file-nope"},
        ),
        404,
    )
    assert missing["param"] == "input_file_id"
    # Nothing was stored by any of them.
    assert all(c["input_file_id"] != good for c in http.get("/v1/comparisons").json()["data"])


def test_stopped_or_crashed_service_reruns_the_comparison_after_the_restart(
    training_service: TrainingProcess, gateway: GatewayProcess
) -> None:
    """SIGTERM while a comparison runs: its batch is cancelled and it is re-queued; SIGKILL
    while it runs again: the restarted service re-queues it. Either way it runs to the end and
    is never left `running`."""
    file_id = _upload(gateway, PROMPTS[:2])
    channel = grpc.insecure_channel(training_service.address)
    comparisons = training_pb2_grpc.ComparisonServiceStub(channel)

    def reconnect() -> None:
        nonlocal channel, comparisons
        channel.close()
        channel = grpc.insecure_channel(training_service.address)
        comparisons = training_pb2_grpc.ComparisonServiceStub(channel)

    def get(cid: str) -> training_pb2.Comparison:
        request = training_pb2.GetComparisonRequest(comparison_id=cid)
        reply: training_pb2.Comparison = comparisons.GetComparison(
            request, metadata=signed("default"), timeout=10
        )
        return reply

    def wait_status(cid: str, status: int, timeout: float) -> training_pb2.Comparison:
        name = training_pb2.ComparisonStatus.Name(status)
        found: training_pb2.Comparison = wait_until(
            lambda: (c := get(cid)).status == status and c, timeout, 0.1, name
        )
        return found

    try:
        created = comparisons.CreateComparison(
            training_pb2.CreateComparisonRequest(
                model_a=MODEL_NAME, model_b=MODEL_NAME, input_file_id=file_id, max_tokens=8
            ),
            metadata=signed("default"),
            timeout=120,
        )
        started = wait_status(created.id, training_pb2.COMPARISON_STATUS_RUNNING, 60)
        training_service.terminate()
        assert "comparison re-queued at shutdown" in training_service.log_tail(200)
        cancelled = [
            b
            for b in gateway.client().batches.list(limit=100).data
            if (b.metadata or {}).get("purpose", "").startswith(f"comparison {created.id}")
        ]
        assert cancelled and cancelled[0].status in ("cancelling", "cancelled")

        training_service.start()
        reconnect()
        again = wait_status(created.id, training_pb2.COMPARISON_STATUS_RUNNING, 60)
        assert again.start_time.ToNanoseconds() > started.start_time.ToNanoseconds()
        training_service.kill9()
        training_service.start()
        reconnect()
        assert "comparisons an earlier run left running" in training_service.log_tail(200)
        done = wait_status(created.id, training_pb2.COMPARISON_STATUS_COMPLETED, 600)
        assert done.start_time.ToNanoseconds() > again.start_time.ToNanoseconds()
        items = comparisons.ListComparisonItems(
            training_pb2.ListComparisonItemsRequest(comparison_id=created.id),
            metadata=signed("default"),
            timeout=10,
        ).items
        assert len(items) == 2 and all(i.answer_a and i.answer_b for i in items)
    finally:
        channel.close()
