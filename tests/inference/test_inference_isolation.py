"""Project isolation in the inference domain, below the gateway (SQLite and PostgreSQL): the
finished-batch event feed tells a project only of its own batches. The two-project suite over
the real stack is tests/e2e/test_isolation.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from support import batch_line


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
