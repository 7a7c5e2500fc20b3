"""Entry point: settings → dependencies → server. `python -m loomstack_inference`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from pathlib import Path

from prometheus_client import start_http_server

from loomstack.inference.v1 import batches_pb2_grpc, chat_pb2_grpc, files_pb2_grpc, models_pb2_grpc
from loomstack_kit.blobstore import open_blob_store
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.grpc_core import require_defaults
from loomstack_kit.identity import IdentitySigner
from loomstack_kit.json_logging import configure_logging
from loomstack_kit.server import GrpcServer, Registration
from loomstack_kit.tracing import configure_tracing, instrument_sqlalchemy

from .adapters import AdapterCache
from .background import maintain_batches, start_engine_then_run
from .batches import Batches
from .engine import VllmEngine
from .files import FileStore
from .leases import LeaseQueue, release_previous_leases
from .metrics import InferenceMetrics
from .registry import Registry
from .runner import Runner
from .servicer import BatchServicer, ChatServicer, FileServicer, ModelServicer
from .settings import InferenceSettings

log = logging.getLogger("loomstack_inference")
MIGRATIONS = str(Path(__file__).parent / "migrations")


async def serve(settings: InferenceSettings) -> None:
    """Runs the configured roles until SIGTERM."""
    url = settings.resolved_database_url()
    await asyncio.to_thread(migrate, url, MIGRATIONS, "alembic_version_inference")
    db = create_db_engine(url)
    instrument_sqlalchemy(db)
    blobs = open_blob_store(settings.blob_backend, root=settings.resolved_blob_dir(), engine=db)
    files = FileStore(db, blobs, settings.max_file_bytes)
    batches = Batches(
        db, files, shard_lines=settings.shard_lines, max_lines=settings.max_batch_lines
    )
    registry = Registry(db)
    metrics = InferenceMetrics()
    is_api, is_engine = settings.has_role("api"), settings.has_role("engine")

    vllm: VllmEngine | None = None
    runner: Runner | None = None
    if is_engine:
        if not settings.model_path:
            raise SystemExit("LOOMSTACK_INFERENCE_MODEL_PATH must name the model directory")
        vllm = VllmEngine(
            model_path=settings.model_path,
            served_name=settings.model_name,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            dtype=settings.dtype,
            extra_args=settings.engine_args,
            max_lora_rank=settings.max_lora_rank,
            max_loras=settings.max_loras,
            cpu_memory_fraction=settings.cpu_memory_fraction,
            lora_engine=settings.lora_engine,
            lora_idle_seconds=settings.lora_idle_seconds,
        )

    def engine_ready() -> bool:
        return runner is not None and runner.ready

    registrations = [
        Registration(
            files_pb2_grpc.add_FileServiceServicer_to_server,
            FileServicer(files),
            "loomstack.inference.v1.FileService",
        ),
        Registration(
            batches_pb2_grpc.add_BatchServiceServicer_to_server,
            BatchServicer(batches),
            "loomstack.inference.v1.BatchService",
        ),
        Registration(
            models_pb2_grpc.add_ModelServiceServicer_to_server,
            ModelServicer(registry, files),
            "loomstack.inference.v1.ModelService",
        ),
        Registration(
            chat_pb2_grpc.add_ChatServiceServicer_to_server,
            ChatServicer(
                vllm,
                engine_ready,
                registry,
                settings=settings,
                signer=IdentitySigner(settings.secret(), "inference"),
                metrics=metrics,
                max_online_requests=settings.max_online_requests,
                engine_tls_server_name=settings.engine_tls_server_name,
            ),
            "loomstack.inference.v1.ChatService",
        ),
    ]
    tasks: list[asyncio.Task[None]] = []

    async def stop_roles() -> None:
        if runner is not None:
            await runner.stop()
        for task in tasks:
            task.cancel()

    server = GrpcServer(settings, registrations, on_shutdown=[stop_roles])
    await server.start()
    server.install_signal_handlers()
    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
        except OSError as exc:  # metrics are not worth refusing to serve batches
            log.warning("metrics server not started", extra={"error": str(exc)})

    if settings.model_path:
        # The api role registers the configured model, so submissions are accepted even
        # before (or without) a running engine.
        await asyncio.to_thread(
            registry.register_model,
            settings.model_name,
            settings.model_path,
            settings.max_model_len,
        )
    if is_api:
        tasks.append(asyncio.create_task(maintain_batches(batches, settings.poll_seconds, metrics)))
    if not is_engine:
        await server.set_started()
        await server.set_ready(True)
    else:
        engine_id = settings.engine_id or f"{socket.gethostname()}-{os.getpid()}"
        address = settings.advertise_address or f"{settings.host}:{server.port}"
        released = await asyncio.to_thread(release_previous_leases, db, engine_id)
        if released:
            log.info("released leases of an earlier run", extra={"shards": released})
        queue = LeaseQueue(db, f"{engine_id}:{uuid.uuid4().hex[:8]}", settings.lease_seconds)
        assert vllm is not None
        adapter_cache = AdapterCache(files, settings.home / "adapters", max_bytes=8 * 1024**3)
        runner = Runner(
            settings,
            queue,
            vllm,
            batches,
            registry,
            engine_id,
            address,
            adapter_cache,
            metrics=metrics,
        )
        tasks.append(asyncio.create_task(start_engine_then_run(server, vllm, runner)))
    try:
        await server.wait_for_stop()
    finally:
        for task in tasks:
            task.cancel()
        if vllm is not None:
            with contextlib.suppress(Exception):
                await vllm.close()
        db.dispose()


def main() -> None:
    """Console entry point: `serve` (the default) or `migrate` (schema only, then exit).

    `migrate` is what the Helm chart's pre-install/pre-upgrade hook Job runs.
    """
    require_defaults()  # GRPC_EXPERIMENTS took effect (grpc_core.py)
    import sys

    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command not in ("serve", "migrate"):
        raise SystemExit(f"usage: loomstack-inference [serve|migrate] (got {command!r})")
    settings = InferenceSettings()
    configure_logging("inference", settings.log_level, settings.log_json)
    if command == "migrate":
        migrate(settings.resolved_database_url(), MIGRATIONS, "alembic_version_inference")
        log.info("database schema is up to date")
        return
    configure_tracing("loomstack-inference", settings.otel_exporter)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
