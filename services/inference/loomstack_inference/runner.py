"""The engine role's batch runner: claims shards, keeps the engine full, commits in micro-batches.

A new shard is claimed whenever the lines still to run in the held shards fall below the
engine's concurrency, so the engine never drains at a shard boundary. Results are committed in
micro-batches (every `flush_lines` results or `flush_seconds`), which also renews the lease and
tells the runner whether the batch was cancelled or expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .adapters import AdapterCache
from .batches import Batches
from .engine import VllmEngine
from .leases import Lease, LeaseQueue, PendingLine, ResultRow
from .metrics import InferenceMetrics
from .registry import Registry
from .settings import InferenceSettings
from .throughput import SustainedRate

log = logging.getLogger(__name__)


@dataclass
class _ShardRun:
    lease: Lease
    remaining: int
    buffer: list[ResultRow] = field(default_factory=list)
    flush_now: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # Set before in-flight lines are cancelled: vLLM answers a cancelled request with a
    # "Client disconnected" error, which must not be recorded as the line's result.
    abandoned: bool = False


class Runner:
    """Runs batch shards of the models this engine serves."""

    def __init__(
        self,
        settings: InferenceSettings,
        queue: LeaseQueue,
        engine: VllmEngine,
        batches: Batches,
        registry: Registry,
        engine_id: str,
        address: str,
        adapter_cache: AdapterCache | None = None,
        *,
        metrics: InferenceMetrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.adapter_cache = adapter_cache
        self._fetches: dict[str, asyncio.Task[str]] = {}
        self.queue = queue
        self.engine = engine
        self.batches = batches
        self.registry = registry
        self.engine_id = engine_id
        self.address = address
        self.models = [engine.served_name]
        # Set once the engine is up (its scheduler's batch size decides the default).
        self.max_inflight = settings.max_inflight
        self._slots = asyncio.Semaphore(max(1, settings.max_inflight))
        self._runs: dict[int, _ShardRun] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._started_at = time.time()
        self._throughput = SustainedRate()
        self.ready = False

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claims work until stopped."""
        if not self.settings.max_inflight:
            # Twice what vLLM schedules at once: finished lines are replaced from a queue
            # inside the engine, never after a round trip through the runner.
            self.max_inflight = 2 * self.engine.max_num_seqs()
            self._slots = asyncio.Semaphore(self.max_inflight)
            log.info("batch lines in flight", extra={"max_inflight": self.max_inflight})
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        try:
            while not self._stopping:
                remaining = sum(r.remaining for r in self._runs.values())
                if remaining < self.max_inflight:
                    lease = await asyncio.to_thread(self.queue.claim, self.models)
                    if lease is not None and not self._stopping:
                        await self._start_shard(lease)
                        continue
                    if lease is not None:
                        await asyncio.to_thread(self.queue.release_all)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
        finally:
            heartbeat.cancel()

    async def _start_shard(self, lease: Lease) -> None:
        lines = await asyncio.to_thread(self.queue.pending_lines, lease)
        run = _ShardRun(lease, remaining=len(lines))
        if not self._runs:
            self._throughput.started()
        self._runs[lease.shard_id] = run
        run.task = asyncio.create_task(self._run_shard(run, lines))
        log.info(
            "claimed shard",
            extra={"batch_id": lease.batch_id, "shard": lease.seq, "lines": len(lines)},
        )

    async def _one(self, run: _ShardRun, line: PendingLine) -> None:
        async with self._slots:
            self.metrics.inflight.inc()
            try:
                outcome = await self.engine.run_line(line.custom_id, line.body_json)
            finally:
                self.metrics.inflight.dec()
        if run.abandoned:
            return
        run.buffer.append(
            ResultRow(
                line.line_no,
                line.custom_id,
                outcome.ok,
                outcome.line_json,
                outcome.input_tokens,
                outcome.cached_tokens,
                outcome.output_tokens,
            )
        )
        run.remaining -= 1
        self._throughput.finished(outcome.output_tokens)
        model = run.lease.model
        self.metrics.requests.labels(model, "completed" if outcome.ok else "failed").inc()
        self.metrics.output_tokens.labels(model).inc(outcome.output_tokens)
        self.metrics.input_tokens.labels(model).inc(outcome.input_tokens)
        if len(run.buffer) >= self.settings.flush_lines:
            run.flush_now.set()
        if run.remaining < self.max_inflight:
            self._wake.set()

    async def _run_shard(self, run: _ShardRun, lines: list[PendingLine]) -> None:
        lease = run.lease
        tasks = [asyncio.create_task(self._one(run, line)) for line in lines]
        all_done = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
        outcome_state = "done"
        try:
            while True:
                run.flush_now.clear()
                waiter = asyncio.ensure_future(run.flush_now.wait())
                pending: set[asyncio.Future[Any]] = {all_done, waiter}
                await asyncio.wait(
                    pending,
                    timeout=self.settings.flush_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                finished = all_done.done()
                rows, run.buffer = run.buffer, []
                outcome = await asyncio.to_thread(self.queue.commit, lease, rows)
                if not outcome.still_owned:
                    outcome_state = "lost"
                    break
                if outcome.stop:
                    outcome_state = "stopped"
                    break
                if finished:
                    break
        except asyncio.CancelledError:
            outcome_state = "interrupted"
            raise
        finally:
            run.abandoned = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(all_done, return_exceptions=True)
            self._runs.pop(lease.shard_id, None)
            if not self._runs:
                self._throughput.idle()
            self._wake.set()
            if outcome_state != "interrupted":
                await self._end_shard(lease, outcome_state)

    async def _end_shard(self, lease: Lease, state: str) -> None:
        log.info(
            "shard ended", extra={"batch_id": lease.batch_id, "shard": lease.seq, "state": state}
        )
        if state == "done":
            await asyncio.to_thread(self.queue.complete, lease)
        elif state == "stopped":
            await asyncio.to_thread(self.queue.stop, lease)
        if state in ("done", "stopped"):
            final = await asyncio.to_thread(self.batches.try_finalize, lease.batch_id)
            if final:
                self.metrics.batches_finalized.labels(final).inc()
                log.info("batch finalized", extra={"batch_id": lease.batch_id, "status": final})

    # -- heartbeat and stop --------------------------------------------------------------------

    async def _refresh_adapters(self) -> None:
        """Registered adapters of this engine's model become claimable and advertised."""
        try:
            adapters = await asyncio.to_thread(self.registry.adapters_of, self.engine.served_name)
        except Exception:
            log.exception("reading the registered adapters failed")
            return
        local = self._local_adapters(adapters)
        try:
            await self.engine.set_adapters(local)
        except Exception:
            log.exception("unloading a deleted adapter failed")
        self.models = [self.engine.served_name, *self.engine.servable(local)]

    def _local_adapters(self, adapters: dict[str, str]) -> dict[str, str]:
        """name → directory of the adapters whose files are on this engine's disk.

        An uploaded archive not fetched yet is fetched in the background (never in the
        heartbeat itself, which renews the leases); the adapter is advertised, so claimed and
        served here, from the first refresh after its files are in place. A failed fetch is
        logged and retried at the next refresh.
        """
        if self.adapter_cache is None:
            return adapters
        local: dict[str, str] = {}
        for name, source in adapters.items():
            path = self.adapter_cache.cached(source)
            if path is not None:
                local[name] = path
                continue
            task = self._fetches.get(source)
            if task is None:
                self._fetches[source] = asyncio.create_task(
                    asyncio.to_thread(self.adapter_cache.fetch, source)
                )
            elif task.done():
                del self._fetches[source]
                if task.cancelled() or task.exception() is not None:
                    log.error(
                        "fetching an adapter failed",
                        extra={"model": name, "source": source, "error": str(task.exception())},
                    )
                else:
                    local[name] = task.result()
        return local

    async def _heartbeat_loop(self) -> None:
        interval = max(1.0, self.settings.lease_seconds / 4)
        while True:
            if self.engine.lora_enabled:
                await self._refresh_adapters()
            tps, rps = self._throughput.rates()
            self.metrics.throughput.set(tps)
            try:
                await asyncio.to_thread(self.queue.renew_all)
                await asyncio.to_thread(
                    self.registry.heartbeat,
                    self.engine_id,
                    self.address,
                    self.models,
                    ready=self.ready,
                    tokens_per_second=tps,
                    requests_per_second=rps,
                    started_at=self._started_at,
                )
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Graceful stop: commit what finished, cancel in-flight lines, release the leases."""
        self._stopping = True
        self._wake.set()
        runs = list(self._runs.values())
        for run in runs:
            run.abandoned = True
            if run.task is not None:
                run.task.cancel()
        for run in runs:
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
            if run.buffer:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.queue.commit, run.lease, run.buffer)
        released = await asyncio.to_thread(self.queue.release_all)
        await asyncio.to_thread(self.registry.remove_engine, self.engine_id)
        log.info("runner stopped", extra={"released_shards": released})
