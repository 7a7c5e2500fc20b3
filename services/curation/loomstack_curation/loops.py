"""The curation service's background loops: following the batch event feed, working the import
queue, reconciling annotations with Label Studio, tidying Label Studio's projects once at
start, and running the plugins' result handlers, their retries and their own loops. `__main__`
only wires them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from opentelemetry import trace

from loomstack_kit.errors import NotFound

from .annotations import AnnotationStore
from .batch_results import BatchResults, read_results
from .catalog import SchemaCatalog
from .feed import FeedConsumer
from .import_queue import QueuedImport
from .importer import Importer
from .inference_client import InferenceClient
from .plugin_deliveries import PluginDeliveries
from .plugin_handlers import BoundHandler, HandlerCalls, HandlerRunner, retry_deliveries
from .projects import ProjectMap
from .reconcile import reconcile
from .relocation import Relocation
from .settings import CurationSettings

log = logging.getLogger("loomstack_curation")
tracer = trace.get_tracer("loomstack_curation")


def _traced_attempt(
    importer: Importer, item: QueuedImport, read: Callable[[QueuedImport], BatchResults]
) -> None:
    """One import attempt as one trace: its reads of the batch's files from the inference
    service are child spans of it (the kit's client channel propagates the context)."""
    with tracer.start_as_current_span(
        "curation.import",
        attributes={"loomstack.batch_id": item.batch_id, "loomstack.project": item.project},
    ):
        importer.attempt(item, read)


async def follow_feed(
    inference: InferenceClient,
    consumer: FeedConsumer,
    settings: CurationSettings,
    wake: asyncio.Event,
) -> None:
    """Long-polls the batch event feed from the stored cursor; queues imports."""
    delay = settings.retry_base_seconds
    while True:
        try:
            cursor = await asyncio.to_thread(consumer.cursor)
            events = await asyncio.to_thread(
                inference.batch_events, cursor, 100, settings.feed_wait_seconds
            )
            queued = await asyncio.to_thread(consumer.handle, events) if events else 0
            if queued:
                wake.set()
            delay = settings.retry_base_seconds
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("batch event feed unavailable", extra={"error": str(exc), "delay": delay})
            await asyncio.sleep(delay)
            delay = min(settings.retry_max_seconds, delay * 2)


async def work_imports(
    importer: Importer,
    catalog: SchemaCatalog,
    inference: InferenceClient,
    settings: CurationSettings,
    wake: asyncio.Event,
) -> None:
    """Runs due imports one at a time."""

    def read(item: QueuedImport) -> BatchResults:
        # Streamed: neither file is held whole, whatever its size.
        return read_results(
            inference.read_lines(item.project, item.input_file_id),
            inference.read_lines(item.project, item.output_file_id),
        )

    while True:
        try:
            await asyncio.to_thread(catalog.refresh)
            due = await asyncio.to_thread(importer.queue.due)
            for item in due:
                await asyncio.to_thread(_traced_attempt, importer, item, read)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("import pass failed")
            due = []
        if not due:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), settings.poll_seconds)


async def reconcile_loop(
    client: object,
    projects: ProjectMap,
    store: AnnotationStore,
    relocation: Relocation,
    settings: CurationSettings,
) -> None:
    while True:
        await asyncio.sleep(settings.reconcile_seconds)
        try:
            # A project deleted in (or wiped from) Label Studio is never exported or written to.
            await asyncio.to_thread(projects.forget_lost)
            await asyncio.to_thread(relocation.run)
            await asyncio.to_thread(reconcile, client, projects, store)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("reconcile failed", extra={"error": str(exc)})


async def tidy_projects(
    projects: ProjectMap,
    catalog: SchemaCatalog,
    relocation: Relocation,
    settings: CurationSettings,
) -> None:
    """Once at start: mapped projects Label Studio lost are forgotten (their batches imported
    again), every other one's title names its project and carries our webhook (new projects
    get both when they are created), and tasks recorded in another project's Label Studio
    project are moved to their own (the reconcile loop finishes what is left)."""

    def tidy() -> None:
        # Never retitle a project id a wiped Label Studio has given to someone else.
        projects.forget_lost()
        for mapped in projects.all():
            try:
                schema = catalog.get(mapped.schema_id, mapped.schema_version)
            except NotFound:
                schema = None
            if schema is not None:
                projects.retitle(mapped, schema)
            projects.ensure_webhook(mapped.ls_project_id)
        relocation.run()

    while True:
        try:
            await asyncio.to_thread(tidy)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("Label Studio projects not tidied yet", extra={"error": str(exc)})
            await asyncio.sleep(settings.retry_base_seconds * 5)


async def run_plugin_handlers(runner: HandlerRunner, settings: CurationSettings) -> None:
    """Runs a feed's plugin handlers page after page (the fetch long-polls the feed)."""
    delay = settings.retry_base_seconds
    while True:
        try:
            await runner.step()
            delay = settings.retry_base_seconds
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "plugin handlers' feed unavailable",
                extra={"feed": runner.feed, "error": str(exc), "delay": delay},
            )
            await asyncio.sleep(delay)
            delay = min(settings.retry_max_seconds, delay * 2)


async def retry_plugin_deliveries(
    deliveries: PluginDeliveries,
    handlers: Sequence[BoundHandler],
    calls: HandlerCalls,
    settings: CurationSettings,
) -> None:
    """Delivers the failed events that are due again, every `poll_seconds`."""
    while True:
        try:
            tried = await retry_deliveries(deliveries, handlers, calls)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("plugin retries failed", extra={"error": str(exc)})
            tried = 0
        if not tried:
            await asyncio.sleep(settings.poll_seconds)


async def run_plugin_loop(plugin: str, loop: Awaitable[None]) -> None:
    """A plugin's own loop; its crash is logged, never the service's."""
    try:
        await loop
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("plugin loop stopped", extra={"plugin": plugin})
