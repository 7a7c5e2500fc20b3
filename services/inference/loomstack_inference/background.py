"""The inference service's background loops: the api role's batch maintenance and the engine
role's start-then-run. `__main__` only wires them."""

from __future__ import annotations

import asyncio
import logging

from loomstack_kit.server import GrpcServer

from .batches import Batches
from .engine import VllmEngine
from .metrics import InferenceMetrics
from .runner import Runner

log = logging.getLogger("loomstack_inference")


async def start_engine_then_run(server: GrpcServer, vllm: VllmEngine, runner: Runner) -> None:
    """Starts vLLM, marks the service started and ready, then runs batches until cancelled; an
    engine that fails to start stops the service."""
    try:
        await vllm.start()
    except Exception:
        log.exception("engine failed to start")
        server.request_stop()
        raise
    runner.ready = True
    await server.set_started()
    await server.set_ready(True)
    await runner.run()


async def maintain_batches(batches: Batches, interval: float, metrics: InferenceMetrics) -> None:
    """Finalizes cancelled, expired and stale batches, whatever the runners are doing, and
    publishes the queue depth per model."""
    seen: set[str] = set()
    while True:
        try:
            depth = await asyncio.to_thread(batches.queue_depth)
            seen |= depth.keys()
            for model in seen:
                metrics.queue_depth.labels(model).set(depth.get(model, 0))
            for batch_id, status in await asyncio.to_thread(batches.maintain):
                metrics.batches_finalized.labels(status).inc()
                log.info("batch finalized", extra={"batch_id": batch_id, "status": status})
        except Exception:
            log.exception("maintenance pass failed")
        await asyncio.sleep(interval)
