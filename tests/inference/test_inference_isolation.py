"""Project isolation in the inference domain, below the gateway (SQLite and PostgreSQL): the
finished-batch event feed tells a project only of its own batches, and an adapter registration
never takes over a base model or another project's adapter. The two-project suite over the real
stack is tests/e2e/test_isolation.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from support import MODEL_NAME, batch_line

from loomstack_kit.errors import AlreadyExists


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _cancelled_batch(domain, project: str) -> str:  # type: ignore[no-untyped-def]
    data = json.dumps(batch_line("c0", "q0")).encode() + b"\n"
    rec = await domain.files.upload(project, "in.jsonl", "batch", _chunks(data))
    view = domain.batches.create(
        project,
        input_file_id=rec.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"secret": project},
    )
    domain.batches.cancel(project, view.id)
    return str(view.id)


async def test_the_event_feed_tells_a_project_only_of_its_own_batches(domain) -> None:  # type: ignore[no-untyped-def]
    a = await _cancelled_batch(domain, "team-a")
    b = await _cancelled_batch(domain, "team-b")
    domain.batches.maintain()  # finalizes the cancelled batches: one event each
    everything = domain.batches.events(0, 10)
    assert [view.id for *_, view in everything] == [a, b]
    assert [view.id for *_, view in domain.batches.events(0, 10, "team-a")] == [a]
    assert [view.id for *_, view in domain.batches.events(0, 10, "team-b")] == [b]
    # The cursor works within a project's events too: after A's only event, nothing of B's.
    assert domain.batches.events(everything[0][0], 10, "team-a") == []
    assert domain.batches.events(0, 10, "team-c") == []


def test_an_adapter_id_that_is_taken_cannot_be_registered_over(domain) -> None:  # type: ignore[no-untyped-def]
    registry = domain.registry
    name = f"ft:{MODEL_NAME}:x:job1"
    registry.register_adapter(name, "/a/1", 2048, parent=MODEL_NAME, owned_by="team-a")
    # The owner may register it again (a retried registration), with a new source.
    registry.register_adapter(name, "/a/2", 2048, parent=MODEL_NAME, owned_by="team-a")
    assert registry.get_model(name, "team-a").source == "/a/2"
    with pytest.raises(AlreadyExists, match="is taken"):
        registry.register_adapter(name, "/b", 2048, parent=MODEL_NAME, owned_by="team-b")
    with pytest.raises(AlreadyExists, match="is taken"):
        registry.register_adapter(name, "/adm", 2048, parent=MODEL_NAME, owned_by="admin")
    with pytest.raises(AlreadyExists, match="is taken"):
        registry.register_adapter(MODEL_NAME, "/b", 2048, parent=MODEL_NAME, owned_by="team-b")
    owned = registry.get_model(name, None)
    assert (owned.owned_by, owned.source) == ("team-a", "/a/2")
    base = registry.get_model(MODEL_NAME, None)
    assert (base.parent, base.owned_by) == (None, "system")
