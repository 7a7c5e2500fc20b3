"""After a trainer finished: keep the adapter, write the metrics file, gate, register, wait
for an engine, succeed.

The adapter goes to the blob store, the per-step metrics CSV to the inference service's
files (OpenAI's `result_files`, purpose `fine-tune-results`). With a validation file the eval
gate decides whether the adapter is promoted, i.e. registered as the model
`ft:<base>:<suffix>:<job>` that batches and chat can name.

As with OpenAI, a job reports `succeeded` once its model can be used: after registering it the
job stays `running` (with an event saying so) until a ready engine advertises the model, which
each engine does once it has fetched the adapter (and, where adapters get an engine of their
own, once that engine is up). Waiting here rather than making the first requests wait on an
engine covers chat and batches alike, and the job's state says when. If no engine serves the
model within `serve_wait_seconds` the job succeeds anyway, with a warning event: the adapter is
trained and registered, and an engine that comes up later serves it (failing the job would throw
the training away because an engine was down). A job cancelled while it waits is not
succeeded, and its model is removed again.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loomstack_kit.blobstore import BlobStore

from .artifacts import store_directory
from .jobs import RUNNING, Jobs, JobView, fine_tuned_model_name

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "step",
    "train_loss",
    "learning_rate",
    "tokens_per_second",
    "trained_tokens",
    "epoch",
)

# (job, adapter directory) -> where the engines find the adapter (the uploaded archive's id).
Publisher = Callable[[JobView, Path], Awaitable[str]]
# (job, adapter source, model name) -> the eval result dict (with `promoted`), or None.
EvalGate = Callable[[JobView, str, str], Awaitable[dict[str, Any] | None]]
# (job, model name, adapter source) -> None; registers the adapter as a model.
Registrar = Callable[[JobView, str, str], Awaitable[None]]
# (job, filename, content) -> file id of a stored result file.
ResultStore = Callable[[JobView, str, bytes], Awaitable[str]]
# (job, model name) -> how many ready engines serve the model now.
ReadyEngines = Callable[[JobView, str], Awaitable[int]]
# (job, model name) -> None; removes a registered model again.
Unregistrar = Callable[[JobView, str], Awaitable[None]]


def metrics_csv(rows: list[dict[str, Any]]) -> bytes:
    """OpenAI-style step metrics file: one row per optimizer step."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return out.getvalue().encode()


class Promotion:
    """Finishes a trained job (the same for every runner)."""

    def __init__(
        self,
        jobs: Jobs,
        blobs: BlobStore,
        *,
        store_result: ResultStore | None = None,
        eval_gate: EvalGate | None = None,
        register: Registrar | None = None,
        publish: Publisher | None = None,
        ready_engines: ReadyEngines | None = None,
        unregister: Unregistrar | None = None,
        serve_wait_seconds: float = 600.0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.jobs = jobs
        self.blobs = blobs
        self.store_result = store_result
        self.eval_gate = eval_gate
        self.register = register
        self.publish = publish
        self.ready_engines = ready_engines
        self.unregister = unregister
        self.serve_wait_seconds = serve_wait_seconds
        self.poll_seconds = poll_seconds

    async def finish(self, job: JobView, adapter_dir: Path, done: dict[str, Any]) -> None:
        """Adapter → blob, metrics → result file, gate, register, `succeeded`."""
        blob_id = await asyncio.to_thread(
            store_directory, self.blobs, f"{job.id}-adapter", adapter_dir
        )
        result_files: list[str] = []
        if self.store_result is not None:
            rows = await asyncio.to_thread(self.jobs.step_metrics, job.id)
            try:
                result_files.append(
                    await self.store_result(job, f"{job.id}-metrics.csv", metrics_csv(rows))
                )
            except Exception as exc:  # the adapter is worth keeping without its metrics file
                log.warning("metrics file not stored", extra={"job_id": job.id, "error": str(exc)})
                await asyncio.to_thread(
                    self.jobs.add_event, job.id, "warn", f"Metrics file not stored: {exc}"
                )
        name = fine_tuned_model_name(job.model, job.suffix, job.id)
        # Uploaded once: the gate's candidate and the promoted model share the archive.
        source = str(adapter_dir)
        if self.publish is not None:
            source = await self.publish(job, adapter_dir)
        eval_result = None
        if self.eval_gate is not None and job.validation_file:
            await asyncio.to_thread(
                self.jobs.add_event, job.id, "info", "Evaluating base and fine-tuned model"
            )
            eval_result = await self.eval_gate(job, source, name)
            if eval_result is not None:
                verdict = "promoted" if eval_result.get("promoted") else "not promoted"
                await asyncio.to_thread(
                    self.jobs.add_event,
                    job.id,
                    "info",
                    f"Eval on {eval_result['examples']} held-out examples: token overlap "
                    f"base {eval_result['base_token_overlap']:.3f}, fine-tuned "
                    f"{eval_result['fine_tuned_token_overlap']:.3f}; exact match base "
                    f"{eval_result['base_exact_match']:.3f}, fine-tuned "
                    f"{eval_result['fine_tuned_exact_match']:.3f} ({verdict})",
                )
        promoted = eval_result is None or bool(eval_result.get("promoted"))
        if promoted and self.register is not None:
            await self.register(job, name, source)
            if not await self.wait_served(job, name):
                if self.unregister is not None:
                    await self.unregister(job, name)
                return
        if promoted:
            message = f"The job has successfully completed: {name}"
        else:
            message = "The job completed, but the fine-tuned model did not beat the base model"
        await asyncio.to_thread(
            self.jobs.succeed,
            job.id,
            fine_tuned_model=name if promoted else None,
            trained_tokens=int(done.get("trained_tokens", 0)),
            trained_steps=int(done.get("steps", 0)),
            result_files=result_files,
            adapter_blob_id=blob_id,
            eval_result=eval_result,
            message=message,
        )

    async def wait_served(self, job: JobView, name: str) -> bool:
        """Keeps the job running until a ready engine serves `name` or `serve_wait_seconds`
        pass (then a warning event); False when the job stopped running meanwhile (cancelled)."""
        if self.ready_engines is None:
            return True
        deadline = time.monotonic() + self.serve_wait_seconds
        waiting = False
        while True:
            try:
                ready = await self.ready_engines(job, name)
            except Exception as exc:  # the inference service restarting: ask again
                log.warning("ready engines unknown", extra={"job_id": job.id, "error": str(exc)})
                ready = 0
            if ready > 0:
                if waiting:
                    await self._event(job, "info", f"An engine serves {name}")
                return True
            if await asyncio.to_thread(self.jobs.status_of, job.id) != RUNNING:
                return False
            if time.monotonic() >= deadline:
                await self._event(
                    job,
                    "warn",
                    f"No engine served {name} within {self.serve_wait_seconds:.0f} s: the model "
                    "is registered, and requests to it get 503 until an engine of "
                    f"{job.model} with LoRA enabled serves it",
                )
                return True
            if not waiting:
                waiting = True
                await self._event(
                    job,
                    "info",
                    f"Waiting for an engine to serve {name} "
                    f"(up to {self.serve_wait_seconds:.0f} s)",
                )
            await asyncio.sleep(self.poll_seconds)

    async def _event(self, job: JobView, level: str, message: str) -> None:
        await asyncio.to_thread(self.jobs.add_event, job.id, level, message)
