"""Plugin result handlers over a feed: priority order, a cursor each, failures stored for retry
with backoff and dead-lettered, an admin's retry, and replay after a crash (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from loomstack_curation.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_curation.plugin_deliveries import DeliveryStatus, PluginDeliveries
from loomstack_curation.plugin_handlers import (
    BoundHandler,
    HandlerCalls,
    HandlerRunner,
    ordered,
    retry_deliveries,
)
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from loomstack_kit.plugins import FeedEvent, ResultHandler

CALLS = HandlerCalls(timeout=30)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    migrate(db_url, MIGRATIONS, VERSION_TABLE)
    db = create_db_engine(db_url)
    yield db
    db.dispose()


class Feed:
    """A feed of events held in memory (the real feeds are tested with their services)."""

    def __init__(self, count: int) -> None:
        self.events = [
            FeedEvent(
                feed="batches",
                sequence=i,
                type="batch.completed" if i % 2 else "batch.created",
                project="p",
                data={"batch_id": f"batch_{i}"},
            )
            for i in range(1, count + 1)
        ]
        self.fetched: list[int] = []

    async def fetch(self, after: int, limit: int) -> list[FeedEvent]:
        self.fetched.append(after)
        return [e for e in self.events if e.sequence > after][:limit]


def bound(plugin: str, name: str, handle: Any, priority: int = 100, **kw: Any) -> BoundHandler:
    return BoundHandler(
        plugin, ResultHandler(name=name, handle=handle, priority=priority, **kw), context=None
    )  # type: ignore[arg-type]


def test_handlers_run_in_priority_order_each_from_its_own_cursor(engine: Engine) -> None:
    calls: list[tuple[str, int]] = []

    def record(name: str) -> Any:
        return lambda event, context: calls.append((name, event.sequence))

    handlers = [
        bound("b", "late", record("late"), priority=30),
        bound("a", "early", record("early"), priority=10),
        bound("a", "completed_only", record("completed"), priority=20, events=("batch.completed",)),
    ]
    assert [h.handler.name for h in ordered(handlers)] == ["early", "completed_only", "late"]
    feed = Feed(4)
    deliveries = PluginDeliveries(engine)
    runner = HandlerRunner("batches", handlers, deliveries, feed.fetch, CALLS)
    assert asyncio.run(runner.step()) == 4
    assert calls == [
        ("early", 1),
        ("early", 2),
        ("early", 3),
        ("early", 4),
        ("completed", 1),
        ("completed", 3),
        ("late", 1),
        ("late", 2),
        ("late", 3),
        ("late", 4),
    ]
    # Every cursor moved past the page, including over the events a handler does not want.
    assert deliveries.cursors("batches") == {
        ("a", "early"): 4,
        ("a", "completed_only"): 4,
        ("b", "late"): 4,
    }
    calls.clear()
    assert asyncio.run(runner.step()) == 0
    assert calls == []


def test_a_failing_handler_blocks_nothing_and_its_event_is_retried_then_dead(
    engine: Engine,
) -> None:
    seen: list[int] = []
    broken = {"on": True}

    def flaky(event: FeedEvent, context: Any) -> None:
        if event.sequence == 2 and broken["on"]:
            raise ConnectionError("the plugin's database is down")

    handlers = [
        bound("x", "flaky", flaky, priority=1),
        bound("y", "steady", lambda e, c: seen.append(e.sequence), priority=2),
    ]
    deliveries = PluginDeliveries(engine, retry_base=0.0, retry_max=0.0, max_attempts=3)
    runner = HandlerRunner("batches", handlers, deliveries, Feed(3).fetch, CALLS)
    asyncio.run(runner.step())
    assert seen == [1, 2, 3]  # the other handler saw every event
    assert deliveries.cursors("batches")[("x", "flaky")] == 3  # and the failing one moved on
    [stored] = deliveries.list()
    assert (stored.plugin, stored.handler, stored.event.sequence) == ("x", "flaky", 2)
    assert stored.status is DeliveryStatus.RETRYING and stored.attempts == 1
    assert "ConnectionError: the plugin's database is down" in stored.error
    assert stored.event.data == {"batch_id": "batch_2"}

    # Two more failures: the third attempt is the last, then it is dead.
    assert asyncio.run(retry_deliveries(deliveries, handlers, CALLS)) == 1
    assert deliveries.get(stored.id).attempts == 2
    asyncio.run(retry_deliveries(deliveries, handlers, CALLS))
    dead = deliveries.get(stored.id)
    assert dead.status is DeliveryStatus.DEAD and dead.attempts == 3
    assert asyncio.run(retry_deliveries(deliveries, handlers, CALLS)) == 0  # dead ones wait
    assert [d.id for d in deliveries.list(status="dead")] == [stored.id]
    assert deliveries.list(status="retrying") == []

    # An admin's retry, once the cause is fixed, delivers it and empties the list.
    broken["on"] = False
    again = deliveries.retry(stored.id)
    assert again.status is DeliveryStatus.RETRYING and again.attempts == 0
    with pytest.raises(FailedPrecondition):
        deliveries.retry(stored.id)  # only a dead one can be retried
    assert asyncio.run(retry_deliveries(deliveries, handlers, CALLS)) == 1
    assert deliveries.list() == []
    with pytest.raises(NotFound):
        deliveries.get(stored.id)


def test_backoff_grows_and_is_capped(engine: Engine) -> None:
    def fail(event: FeedEvent, context: Any) -> None:
        raise RuntimeError("no")

    handlers = [bound("x", "fail", fail)]
    deliveries = PluginDeliveries(engine, retry_base=10.0, retry_max=25.0, max_attempts=10)
    asyncio.run(HandlerRunner("batches", handlers, deliveries, Feed(1).fetch, CALLS).step())
    [first] = deliveries.list()
    assert first.next_attempt_at - first.created_at == pytest.approx(10.0, abs=1.0)
    assert deliveries.due() == []  # not yet due
    assert len(deliveries.due(now=time.time() + 11)) == 1
    second = deliveries.failed_again(first, "no")
    assert second.next_attempt_at - second.updated_at == pytest.approx(20.0, abs=1.0)
    third = deliveries.failed_again(second, "no")
    assert third.next_attempt_at - third.updated_at == pytest.approx(25.0, abs=1.0)


def test_a_crash_before_the_cursor_moves_replays_the_page(engine: Engine) -> None:
    seen: list[int] = []

    class Crash(BaseException):
        """Stands for the process dying mid-page (not an Exception: the runner cannot catch it)."""

    def crash_on_3(event: FeedEvent, context: Any) -> None:
        if event.sequence == 3 and not seen.count(-1):
            seen.append(-1)
            raise Crash
        seen.append(event.sequence)

    handlers = [bound("x", "h", crash_on_3)]
    deliveries = PluginDeliveries(engine)
    runner = HandlerRunner("batches", handlers, deliveries, Feed(4).fetch, CALLS)
    with pytest.raises(Crash):
        asyncio.run(runner.step())
    assert deliveries.cursors("batches") == {}
    # A new process (a new runner on the same database) delivers the page again: at least once.
    asyncio.run(HandlerRunner("batches", handlers, deliveries, Feed(4).fetch, CALLS).step())
    assert seen == [1, 2, -1, 1, 2, 3, 4]
    assert deliveries.cursors("batches") == {("x", "h"): 4}


def test_a_failure_stored_twice_by_a_replay_is_one_delivery(engine: Engine) -> None:
    deliveries = PluginDeliveries(engine)
    event = Feed(1).events[0]
    deliveries.advance("x", "h", "batches", 1, event, "boom")
    deliveries.advance("x", "h", "batches", 1, event, "boom")
    assert len(deliveries.list()) == 1


def test_listing_filters_and_pages(engine: Engine) -> None:
    deliveries = PluginDeliveries(engine)
    for event in Feed(3).events:
        deliveries.advance(
            "x" if event.sequence < 3 else "y", "h", "batches", event.sequence, event, "e"
        )
    assert [d.event.sequence for d in deliveries.list(plugin="x")] == [1, 2]
    first = deliveries.list(limit=1)
    assert [d.event.sequence for d in deliveries.list(after=first[0].id)] == [2, 3]
    with pytest.raises(InvalidArgument, match="unknown delivery status 'gone'"):
        deliveries.list(status="gone")


def test_a_disabled_plugins_deliveries_wait_untouched(engine: Engine, tmp_path: Path) -> None:
    deliveries = PluginDeliveries(engine, retry_base=0.0)
    for event in Feed(60).events:  # more than a retry pass takes
        deliveries.advance("gone", "h", "batches", event.sequence, event, "e")
    event = Feed(1).events[0]
    deliveries.advance("x", "h", "batches", 1, event, "e")
    seen: list[int] = []
    handlers = [bound("x", "h", lambda e, c: seen.append(e.sequence))]
    # The enabled plugin's delivery is retried; the disabled one's 60 are not even looked at.
    assert asyncio.run(retry_deliveries(deliveries, handlers, CALLS)) == 1
    assert seen == [1]
    still = deliveries.list(plugin="gone", limit=100)
    assert len(still) == 60
    assert all(d.attempts == 1 and d.status is DeliveryStatus.RETRYING for d in still)


def test_a_handler_that_hangs_is_a_failure_after_the_timeout_and_blocks_nothing(
    engine: Engine,
) -> None:
    release = threading.Event()
    seen: list[int] = []

    def hang_on_1(event: FeedEvent, context: Any) -> None:
        if event.sequence == 1:
            release.wait(30)
        seen.append(event.sequence)

    calls = HandlerCalls(timeout=0.3, threads=2)
    handlers = [
        bound("x", "hangs", hang_on_1, priority=1),
        bound("y", "steady", lambda e, c: seen.append(-e.sequence), priority=2),
    ]
    deliveries = PluginDeliveries(engine)
    try:
        asyncio.run(HandlerRunner("batches", handlers, deliveries, Feed(2).fetch, calls).step())
        [stored] = deliveries.list()
        assert (stored.plugin, stored.event.sequence) == ("x", 1)
        assert stored.error == "TimeoutError: the handler did not return within 0.3 s"
        # The hung call holds one of the two threads; the rest ran on the other.
        assert seen == [2, -1, -2]
        assert deliveries.cursors("batches") == {("x", "hangs"): 2, ("y", "steady"): 2}
        # The service's own threads were never the handlers': asyncio.to_thread still works.
        assert asyncio.run(asyncio.to_thread(lambda: 42)) == 42
    finally:
        release.set()
        calls.close()
