"""Running the plugins' result handlers over the two feeds: inference's batch events and
curation's own events (events.py).

For a page of a feed's events, the handlers run in priority order (lower first; then by
plugin and name), each from its own cursor (plugin_deliveries.py), at least once. A handler
that raises has the event stored for retry and moves on, so it blocks neither its feed, the
other handlers nor the import; `retry_deliveries` delivers the stored events again with
backoff until they succeed or are dead-lettered. A handler seen for the first time starts at
the feed's beginning: it is idempotent, so catching up on history is safe and nothing is missed.

Handlers are synchronous plugin code: each call runs in a thread of the handlers' own pool, for
at most a timeout (HandlerCalls).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from opentelemetry import trace

from loomstack_kit.plugins import Feed, FeedEvent, ResultHandler

from .events import CurationEvents
from .feed import BatchEvent
from .inference_client import InferenceClient
from .plugin_context import PluginContext
from .plugin_deliveries import Delivery, DeliveryStatus, PluginDeliveries
from .settings import CurationSettings

log = logging.getLogger("loomstack_curation")
tracer = trace.get_tracer("loomstack_curation")

PAGE = 100
# Fetches the feed's events after a sequence: (after, page size) → events in sequence order.
Fetch = Callable[[int, int], Awaitable[list[FeedEvent]]]


@dataclass(frozen=True)
class BoundHandler:
    """A handler with the plugin it belongs to and the context it runs with."""

    plugin: str
    handler: ResultHandler
    context: PluginContext

    @property
    def key(self) -> tuple[str, str]:
        return (self.plugin, self.handler.name)

    def wants(self, event: FeedEvent) -> bool:
        return not self.handler.events or event.type in self.handler.events


def ordered(handlers: Sequence[BoundHandler]) -> list[BoundHandler]:
    """Priority order (lower first), then by plugin and name: the same order on every run."""
    return sorted(handlers, key=lambda b: (b.handler.priority, b.plugin, b.handler.name))


def batch_feed_event(event: BatchEvent) -> FeedEvent:
    """An inference batch event as handlers see it."""
    return FeedEvent(
        feed="batches",
        sequence=event.sequence,
        type=event.type,
        project=event.project,
        data={
            "batch_id": event.batch_id,
            "model": event.model,
            "input_file_id": event.input_file_id,
            "output_file_id": event.output_file_id,
            "failed_lines": event.failed_lines,
            "metadata": dict(event.metadata),
        },
    )


def batch_events_after(inference: InferenceClient, settings: CurationSettings) -> Fetch:
    """The fetch of the batches feed: inference's events, long-polled."""

    async def fetch(after: int, limit: int) -> list[FeedEvent]:
        events = await asyncio.to_thread(
            inference.batch_events, after, limit, settings.feed_wait_seconds
        )
        return [batch_feed_event(e) for e in events]

    return fetch


def curation_events_after(events: CurationEvents, settings: CurationSettings) -> Fetch:
    """The fetch of the curation feed: every project's events, long-polled."""

    async def fetch(after: int, limit: int) -> list[FeedEvent]:
        return await events.wait(None, after, limit, settings.feed_wait_seconds)

    return fetch


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _traced(bound: BoundHandler, event: FeedEvent) -> None:
    """One handler call as one span (its gRPC calls and queries are child spans)."""
    with tracer.start_as_current_span(
        "curation.plugin_handler",
        attributes={
            "loomstack.plugin": bound.plugin,
            "loomstack.handler": bound.handler.name,
            "loomstack.feed": event.feed,
            "loomstack.sequence": event.sequence,
            "loomstack.project": event.project,
        },
    ):
        bound.handler.handle(event, bound.context)


class HandlerCalls:
    """Where and how long handlers run: threads of their own, so a handler that hangs never
    takes the threads the service's own work runs on, and at most `timeout` seconds a call; a
    call past it counts as a failure (the event is stored for retry and the feed moves on; the
    thread is left to finish, Python cannot stop it)."""

    def __init__(self, timeout: float = 120.0, threads: int = 4) -> None:
        self.timeout = timeout
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="plugin-handler")

    async def __call__(self, bound: BoundHandler, event: FeedEvent) -> str:
        """Runs a handler on one event; the error text if it raised or timed out, else empty."""
        loop = asyncio.get_running_loop()
        # The handler's span is a child of whatever trace is current here.
        context = contextvars.copy_context()
        call = loop.run_in_executor(self.executor, context.run, _traced, bound, event)
        try:
            await asyncio.wait_for(call, self.timeout)
        except TimeoutError:
            error = f"TimeoutError: the handler did not return within {self.timeout:g} s"
        except Exception as exc:  # plugin code: any failure is this delivery's problem
            error = _describe(exc)
        else:
            return ""
        log.warning(
            "plugin handler failed",
            extra={
                "plugin": bound.plugin,
                "handler": bound.handler.name,
                "feed": event.feed,
                "sequence": event.sequence,
                "error": error,
            },
        )
        return error

    def close(self) -> None:
        """Stops taking calls (running ones are left to end)."""
        self.executor.shutdown(wait=False, cancel_futures=True)


class HandlerRunner:
    """The handlers of one feed and their deliveries."""

    def __init__(
        self,
        feed: Feed,
        handlers: Sequence[BoundHandler],
        deliveries: PluginDeliveries,
        fetch: Fetch,
        calls: HandlerCalls,
    ) -> None:
        self.feed = feed
        self.handlers = ordered([h for h in handlers if h.handler.feed == feed])
        self.deliveries = deliveries
        self.fetch = fetch
        self.calls = calls

    async def step(self) -> int:
        """Fetches the page after the slowest cursor and runs every handler over it; returns
        how many events were looked at (0: the feed had nothing new)."""
        if not self.handlers:
            return 0
        cursors = await asyncio.to_thread(self.deliveries.cursors, self.feed)
        low = min(cursors.get(h.key, 0) for h in self.handlers)
        events = await self.fetch(low, PAGE)
        if not events:
            return 0
        for bound in self.handlers:
            position = cursors.get(bound.key, 0)
            last = position
            for event in events:
                if event.sequence <= position:
                    continue
                last = event.sequence
                if not bound.wants(event):
                    continue
                error = await self.calls(bound, event)
                if error:
                    await asyncio.to_thread(
                        self.deliveries.advance,
                        bound.plugin,
                        bound.handler.name,
                        self.feed,
                        event.sequence,
                        event,
                        error,
                    )
            if last > position:
                await asyncio.to_thread(
                    self.deliveries.advance, bound.plugin, bound.handler.name, self.feed, last
                )
        return len(events)


async def retry_deliveries(
    deliveries: PluginDeliveries,
    handlers: Sequence[BoundHandler],
    calls: HandlerCalls,
    limit: int = 50,
) -> int:
    """Delivers the due stored events again; returns how many were tried."""
    by_key = {h.key: h for h in handlers}
    plugins = {h.plugin for h in handlers}
    due: list[Delivery] = await asyncio.to_thread(deliveries.due, limit, None, plugins)
    for delivery in due:
        bound = by_key.get((delivery.plugin, delivery.handler))
        if bound is None:  # a handler its plugin no longer has: it waits, untouched
            continue
        error = await calls(bound, delivery.event)
        if not error:
            await asyncio.to_thread(deliveries.delivered, delivery.id)
            continue
        again = await asyncio.to_thread(deliveries.failed_again, delivery, error)
        if again.status is DeliveryStatus.DEAD:
            log.error(
                "plugin delivery dead-lettered",
                extra={
                    "plugin": delivery.plugin,
                    "handler": delivery.handler,
                    "delivery_id": delivery.id,
                    "attempts": again.attempts,
                    "error": error,
                },
            )
    return len(due)
