"""Batches through the gateway with the official openai client: create, retrieve, list with
pagination, cancel, and the exact JSON shape of a batch object."""

from __future__ import annotations

import time

import openai
import pytest
from openai import OpenAI

from gateway_stack import KEY_B, KEY_PAGES, MODEL_NAME, Gateway, poll, upload_batch_input

BATCH_KEYS = {
    "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    "request_counts", "metadata", "usage", "model",
    "priority", "queue_position", "estimated_start_at", "estimated_finish_at",
}  # fmt: skip


def test_create_and_retrieve(gateway: Gateway, client: OpenAI) -> None:
    file_id = upload_batch_input(client, n=4)
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"schema_type": "qa", "owner": "tests"},
        extra_body={"priority": 1},
    )
    assert batch.id.startswith("batch_")
    assert batch.object == "batch"
    assert batch.status == "in_progress"  # queued: no engine runs in these tests
    assert batch.input_file_id == file_id
    assert batch.endpoint == "/v1/chat/completions"
    assert batch.completion_window == "24h"
    assert batch.metadata == {"schema_type": "qa", "owner": "tests"}
    assert batch.model == MODEL_NAME
    assert batch.errors is None
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 0, "failed": 0}
    assert batch.usage is not None and batch.usage.total_tokens == 0
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.model_extra is not None and batch.model_extra["priority"] == 1

    got = client.batches.retrieve(batch.id)
    assert got.id == batch.id and got.status == "in_progress"

    raw = gateway.http().get(f"/v1/batches/{batch.id}").json()
    assert set(raw) == BATCH_KEYS
    assert raw["usage"] == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    assert isinstance(raw["created_at"], int) and isinstance(raw["queue_position"], int)
    client.batches.cancel(batch.id)


def test_list_pages_with_after_and_limit(gateway: Gateway) -> None:
    client = gateway.client(KEY_PAGES)
    file_id = upload_batch_input(client, n=2)
    ids = []
    for _ in range(3):
        ids.append(
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        )
        time.sleep(0.01)  # distinct creation times, so "newest first" is well defined
    newest_first = ids[::-1]

    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert page.has_more is True
    rest = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in rest.data] == newest_first[2:]
    assert rest.has_more is False
    assert [b.id for b in client.batches.list(limit=2)] == newest_first  # auto-paging

    raw = gateway.http(KEY_PAGES).get("/v1/batches", params={"limit": 2}).json()
    assert raw["object"] == "list"
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[2], ids[1], True)
    # another project sees none of them
    assert not {b.id for b in gateway.client(KEY_B).batches.list(limit=100)} & set(ids)


def test_cancel_a_queued_batch(client: OpenAI) -> None:
    batch = client.batches.create(
        input_file_id=upload_batch_input(client),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    final = poll(
        lambda: client.batches.retrieve(batch.id), lambda b: b.status == "cancelled", timeout=10
    )
    assert final.cancelling_at is not None and final.cancelled_at is not None
    assert final.cancelled_at >= final.cancelling_at
    assert final.request_counts is not None and final.request_counts.completed == 0

    # a cancelled batch cannot be cancelled into anything else
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_unknown_batch(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.batches.retrieve("batch_doesnotexist")
    assert exc.value.body["code"] == "batch_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_doesnotexist")
