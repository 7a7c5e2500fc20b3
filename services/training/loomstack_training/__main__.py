"""Entry point: settings → dependencies → server. `python -m loomstack_training`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from loomstack.training.v1 import training_pb2_grpc
from loomstack_kit.blobstore import open_blob_store
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.grpc_core import require_defaults
from loomstack_kit.json_logging import configure_logging
from loomstack_kit.server import GrpcServer, Registration
from loomstack_kit.tracing import configure_tracing, instrument_sqlalchemy

from .comparison_runner import ComparisonRunner
from .comparisons import Comparisons
from .eval_gate import EvalGate
from .inference import InferenceClient
from .jobs import Jobs, JobView, fine_tuned_model_name
from .promotion import Promotion
from .runner_kubernetes import KubernetesRunner
from .runner_local import LocalRunner
from .servicer import FineTuningServicer
from .servicer_comparisons import ComparisonServicer
from .settings import TrainingSettings
from .submission import Submissions
from .tables import blob_chunks

log = logging.getLogger("loomstack_training")
MIGRATIONS = str(Path(__file__).parent / "migrations")
VERSION_TABLE = "alembic_version_training"


async def serve(settings: TrainingSettings) -> None:
    """Serves the FineTuningService and the ComparisonService and runs the configured runner
    and the comparison runner until SIGTERM."""
    if settings.runner not in ("local", "kubernetes"):
        raise SystemExit(f"unknown runner {settings.runner!r}: use local or kubernetes")
    url = settings.resolved_database_url()
    await asyncio.to_thread(migrate, url, MIGRATIONS, VERSION_TABLE)
    db = create_db_engine(url)
    instrument_sqlalchemy(db)
    blobs = open_blob_store(
        settings.blob_backend, root=settings.resolved_blob_dir(), engine=db, table=blob_chunks
    )
    inference = InferenceClient(settings.inference_address, settings)
    jobs = Jobs(db)
    submissions = Submissions(settings, jobs, blobs, inference)

    async def publish(job: JobView, adapter_dir: Path) -> str:
        name = fine_tuned_model_name(job.model, job.suffix, job.id)
        return await asyncio.to_thread(inference.upload_adapter, job.project, name, adapter_dir)

    async def register(job: JobView, name: str, source: str) -> None:
        await asyncio.to_thread(
            inference.register_adapter, job.project, name, parent=job.model, source=source
        )

    gate = EvalGate(
        inference,
        blobs,
        margin=settings.eval_margin,
        max_tokens=settings.eval_max_tokens,
        timeout_seconds=settings.eval_timeout_seconds,
    )

    async def store_result(job: JobView, filename: str, content: bytes) -> str:
        return await asyncio.to_thread(
            inference.upload, job.project, filename, content, "fine-tune-results"
        )

    async def ready_engines(job: JobView, name: str) -> int:
        return await asyncio.to_thread(inference.ready_engines, job.project, name)

    async def unregister(job: JobView, name: str) -> None:
        await asyncio.to_thread(inference.delete_model, job.project, name)

    promotion = Promotion(
        jobs,
        blobs,
        register=register,
        eval_gate=gate,
        store_result=store_result,
        publish=publish,
        ready_engines=ready_engines,
        unregister=unregister,
        serve_wait_seconds=settings.serve_wait_seconds,
        poll_seconds=settings.poll_seconds,
    )
    runner: LocalRunner | KubernetesRunner
    if settings.runner == "kubernetes":
        runner = KubernetesRunner(settings, jobs, blobs, promotion)
    else:
        runner = LocalRunner(settings, jobs, blobs, promotion)
        if problem := await runner.check_environment():
            log.warning(
                "fine-tuning jobs fail until the trainer environment is installed",
                extra={"problem": problem},
            )

    failed = await runner.reconcile()
    if failed:
        log.warning("failed jobs an earlier run left unfinished", extra={"jobs": failed})
    comparisons = Comparisons(db)
    comparison_runner = ComparisonRunner(settings, comparisons, inference)
    requeued, failed = await asyncio.to_thread(comparison_runner.reconcile)
    if requeued or failed:
        log.warning(
            "comparisons an earlier run left running",
            extra={"requeued": requeued, "failed": failed},
        )
    registrations = [
        Registration(
            training_pb2_grpc.add_FineTuningServiceServicer_to_server,
            FineTuningServicer(jobs, submissions, settings.runner),
            "loomstack.training.v1.FineTuningService",
        ),
        Registration(
            training_pb2_grpc.add_ComparisonServiceServicer_to_server,
            ComparisonServicer(comparisons, comparison_runner),
            "loomstack.training.v1.ComparisonService",
        ),
    ]
    runner_task: asyncio.Task[None] | None = None
    comparison_task: asyncio.Task[None] | None = None

    async def stop_runner() -> None:
        if runner_task is not None:
            runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner_task

    async def stop_comparisons() -> None:
        # Not cancelled: its worker thread cancels the running batch and re-queues the
        # comparison within a poll interval, and must finish before the database closes.
        comparison_runner.stop()
        if comparison_task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(comparison_task, 30)

    async def stop_validations() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(submissions.stop(), 30)

    server = GrpcServer(
        settings, registrations, on_shutdown=[stop_runner, stop_comparisons, stop_validations]
    )
    await server.start()
    server.install_signal_handlers()
    runner_task = asyncio.create_task(runner.run())
    resumed = submissions.resume()
    if resumed:
        log.info("validating the files of jobs an earlier run left", extra={"jobs": resumed})
    comparison_task = asyncio.create_task(comparison_runner.run())
    await server.set_started()
    await server.set_ready(True)
    try:
        await server.wait_for_stop()
    finally:
        if runner_task is not None:
            runner_task.cancel()
        comparison_runner.stop()
        inference.close()
        db.dispose()


def main() -> None:
    """Console entry point: `serve` (the default) or `migrate` (schema only, then exit)."""
    require_defaults()  # GRPC_EXPERIMENTS took effect (grpc_core.py)
    import sys

    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command not in ("serve", "migrate"):
        raise SystemExit(f"usage: loomstack-training [serve|migrate] (got {command!r})")
    settings = TrainingSettings()
    configure_logging("training", settings.log_level, settings.log_json)
    if command == "migrate":
        migrate(settings.resolved_database_url(), MIGRATIONS, VERSION_TABLE)
        log.info("database schema is up to date")
        return
    configure_tracing("loomstack-training", settings.otel_exporter)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
