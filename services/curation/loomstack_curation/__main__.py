"""Entry point: settings → dependencies → servers. `python -m loomstack_curation`.

One process serves the gRPC API, the HTTP endpoints Label Studio calls (webhook, ML backend;
http_server.py) and runs the loops of loops.py: the batch event feed consumer, the import
queue worker, the periodic annotation reconcile (which first forgets mapped Label Studio
projects that are gone, lost_projects.py, and moves tasks recorded in another project's Label
Studio project, relocation.py) and the projects' tidying at start. Without Label Studio
configured the API still serves (schemas, renders, snapshots of what is recorded) and imports
wait in the queue.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import uvicorn

from loomstack.curation.v1 import curation_pb2_grpc, plugins_pb2_grpc
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.grpc_core import require_defaults
from loomstack_kit.json_logging import configure_logging
from loomstack_kit.plugins import PluginError
from loomstack_kit.server import GrpcServer, Registration
from loomstack_kit.tracing import configure_tracing, instrument_sqlalchemy

from .annotations import AnnotationStore
from .catalog import SchemaCatalog
from .events import CurationEvents
from .feed import FeedConsumer
from .http_app import create_app
from .http_server import serve_http
from .import_queue import ImportQueue
from .import_records import ImportRecords
from .importer import Importer
from .inference_client import InferenceClient
from .labelstudio_api import connect
from .loops import (
    follow_feed,
    reconcile_loop,
    retry_plugin_deliveries,
    run_plugin_handlers,
    run_plugin_loop,
    tidy_projects,
    work_imports,
)
from .ml_auth import load_credentials
from .ml_backend import MLBackend
from .plugin_context import PluginContext
from .plugin_deliveries import PluginDeliveries
from .plugin_handlers import (
    BoundHandler,
    HandlerCalls,
    HandlerRunner,
    batch_events_after,
    curation_events_after,
)
from .plugin_host import PluginHost
from .plugin_servicer import PluginServicer
from .projects import ProjectMap
from .relocation import Relocation
from .servicer import (
    EventServicer,
    ImportServicer,
    SchemaServicer,
    SnapshotServicer,
    TaskServicer,
)
from .settings import CurationSettings
from .snapshots import SnapshotStore
from .tasks import TaskQueries

log = logging.getLogger("loomstack_curation")
MIGRATIONS = str(Path(__file__).parent / "migrations")
VERSION_TABLE = "alembic_version_curation"
PACKAGE = "loomstack.curation.v1."


async def serve(settings: CurationSettings) -> None:
    """Runs the service until SIGTERM."""
    url = settings.resolved_database_url()
    await asyncio.to_thread(migrate, url, MIGRATIONS, VERSION_TABLE)
    db = create_db_engine(url)
    instrument_sqlalchemy(db)
    host = PluginHost.load(settings)
    await asyncio.to_thread(host.migrate, settings.home)
    host.open_databases(settings.home)
    catalog = SchemaCatalog(
        settings.schemas_dir,
        vocabulary=host.vocabulary(),
        namespaces=host.schema_directories(),
    )
    for problem in catalog.registry.problems:
        log.warning("schema file not loaded", extra={"problem": problem})
    client = (
        connect(
            settings.label_studio_url, settings.label_studio_token, settings.label_studio_timeout
        )
        if settings.label_studio_url
        else None
    )
    projects = ProjectMap(
        db,
        client,
        settings.label_studio_project_prefix,
        webhook_url=settings.public_url.rstrip("/") + "/labelstudio/webhook"
        if settings.public_url
        else "",
        webhook_secret=settings.webhook_secret,
    )
    queue = ImportQueue(
        db,
        catalog,
        retry_base=settings.retry_base_seconds,
        retry_max=settings.retry_max_seconds,
        allow_auto_accept=settings.allow_auto_accept,
    )
    importer = Importer(db, catalog, projects, queue, chunk_size=settings.import_chunk)
    annotations = AnnotationStore(db, catalog)
    queries = TaskQueries(db, catalog, projects, annotations)
    snapshots = SnapshotStore(db, catalog)  # the plugins' exporters are added below
    inference = InferenceClient(settings.inference_address, settings)
    consumer = FeedConsumer(db, queue)
    events = CurationEvents(db, poll_seconds=settings.poll_seconds)

    def upload(project: str, filename: str, content: bytes) -> str:
        return inference.upload(project, filename, content, purpose="fine-tune")

    registrations = [
        Registration(
            curation_pb2_grpc.add_SchemaServiceServicer_to_server,
            SchemaServicer(catalog, projects),
            PACKAGE + "SchemaService",
        ),
        Registration(
            curation_pb2_grpc.add_TaskServiceServicer_to_server,
            TaskServicer(queries),
            PACKAGE + "TaskService",
        ),
        Registration(
            curation_pb2_grpc.add_ImportServiceServicer_to_server,
            ImportServicer(ImportRecords(db)),
            PACKAGE + "ImportService",
        ),
        Registration(
            curation_pb2_grpc.add_SnapshotServiceServicer_to_server,
            SnapshotServicer(snapshots, upload),
            PACKAGE + "SnapshotService",
        ),
        Registration(
            curation_pb2_grpc.add_EventServiceServicer_to_server,
            EventServicer(events),
            PACKAGE + "EventService",
        ),
    ]
    contexts = {
        p.name: PluginContext(
            p.name,
            settings.home,
            host.databases.get(p.name),
            db=db,
            queue=queue,
            queries=queries,
            catalog=catalog,
            inference=inference,
        )
        for p in host.plugins
    }
    registrations += host.registrations(contexts)
    plugin_loops = host.loops(contexts)
    snapshots.exporters = {
        name: (exporter, contexts[host.exporter_plugin(name)])
        for name, exporter in host.exporters().items()
    }
    bound = [
        BoundHandler(p.name, h, contexts[p.name]) for p in host.plugins for h in p.result_handlers
    ]
    deliveries = PluginDeliveries(
        db,
        retry_base=settings.retry_base_seconds,
        retry_max=settings.retry_max_seconds,
        max_attempts=settings.plugin_max_attempts,
    )
    registrations.append(
        Registration(
            plugins_pb2_grpc.add_PluginServiceServicer_to_server,
            PluginServicer(host.status_list, deliveries),
            PACKAGE + "PluginService",
        )
    )
    backend = MLBackend(
        catalog,
        projects,
        # As the project whose Label Studio project asks, never a default one.
        inference.chat_completion,
        model=settings.model,
        max_tokens=settings.max_tokens,
        max_tasks=settings.ml_backend_max_tasks,
    )
    ml_credentials = load_credentials(
        settings.ml_backend_username,
        settings.ml_backend_password,
        settings.ml_backend_password_file,
    )
    if ml_credentials is None:
        log.warning(
            "the ML backend refuses every call: set LOOMSTACK_CURATION_ML_BACKEND_USERNAME "
            "and _PASSWORD (or _PASSWORD_FILE)"
        )
    relocation = Relocation(db, catalog, projects, annotations)
    http = uvicorn.Server(
        uvicorn.Config(
            create_app(annotations, backend, settings.webhook_secret, ml_credentials),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            lifespan="off",
        )
    )
    tasks: list[asyncio.Task[None]] = []

    async def stop_loops() -> None:
        http.should_exit = True
        for task in tasks:
            task.cancel()

    server = GrpcServer(settings, registrations, on_shutdown=[stop_loops])
    await server.start()
    server.install_signal_handlers()
    tasks.append(asyncio.create_task(serve_http(http, settings)))
    wake = asyncio.Event()
    tasks.append(asyncio.create_task(follow_feed(inference, consumer, settings, wake)))
    tasks.append(asyncio.create_task(work_imports(importer, catalog, inference, settings, wake)))
    calls = HandlerCalls(settings.plugin_handler_timeout_seconds, settings.plugin_handler_threads)
    for runner in (
        HandlerRunner("batches", bound, deliveries, batch_events_after(inference, settings), calls),
        HandlerRunner(
            "curation", bound, deliveries, curation_events_after(events, settings), calls
        ),
    ):
        if runner.handlers:
            tasks.append(asyncio.create_task(run_plugin_handlers(runner, settings)))
    if bound:
        tasks.append(
            asyncio.create_task(retry_plugin_deliveries(deliveries, bound, calls, settings))
        )
    for name, loop in plugin_loops:
        tasks.append(asyncio.create_task(run_plugin_loop(name, loop)))
    if client is not None:
        tasks.append(
            asyncio.create_task(reconcile_loop(client, projects, annotations, relocation, settings))
        )
        tasks.append(asyncio.create_task(tidy_projects(projects, catalog, relocation, settings)))
    await server.set_started()
    await server.set_ready(True)
    try:
        await server.wait_for_stop()
    finally:
        for task in tasks:
            task.cancel()
        inference.close()
        calls.close()
        host.close()
        db.dispose()


def main() -> None:
    """Console entry point: `serve` (the default) or `migrate` (schema only, then exit)."""
    require_defaults()  # GRPC_EXPERIMENTS took effect (grpc_core.py)
    import sys

    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command not in ("serve", "migrate"):
        raise SystemExit(f"usage: loomstack-curation [serve|migrate] (got {command!r})")
    settings = CurationSettings()
    configure_logging("curation", settings.log_level, settings.log_json)
    try:
        if command == "migrate":
            migrate(settings.resolved_database_url(), MIGRATIONS, VERSION_TABLE)
            # The enabled plugins' own databases too (the chart's migrations hook runs this);
            # here a plugin that cannot migrate fails the command instead of being left out.
            PluginHost.load(settings).migrate(settings.home, strict=True)
            log.info("database schema is up to date")
            return
        configure_tracing("loomstack-curation", settings.otel_exporter)
        asyncio.run(serve(settings))
    except PluginError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
