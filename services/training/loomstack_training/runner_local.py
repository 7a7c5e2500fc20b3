"""The `local` runner: each job's trainer as a subprocess of the service (the embedded default).

The trainer runs in its own process group with the trainer environment's python. Its stdout
carries progress events (see progress.py), its stderr goes to the job's log file. The runner
watches the job's status while the trainer runs: a cancel sends SIGTERM (the trainer saves a
checkpoint and exits), SIGKILL after a grace period. Any exit without a `done` event fails the
job with the exit status and the log's last lines, so a crashed or killed trainer never leaves
the job `running`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import orjson

from loomstack_kit.blobstore import BlobStore

from . import trainer as trainer_module
from . import trainer_environment
from .artifacts import read_bytes
from .jobs import CANCELLED, RUNNING, Jobs, JobView
from .progress import ProgressRecorder
from .promotion import Promotion
from .settings import TrainingSettings

log = logging.getLogger(__name__)
TRAINER_SCRIPT = Path(trainer_module.__file__).resolve()
RUNNER = "local"
# The job's error code when the trainer environment is missing or incomplete.
TRAINER_UNAVAILABLE = "trainer_unavailable"


def trainer_config(
    job: JobView, *, train_file: Path, output_dir: Path, dtype: str
) -> dict[str, object]:
    """The JSON config trainer.py reads (the same for every runner)."""
    return {
        "base_model_path": job.base_model_path,
        "train_file": str(train_file),
        "output_dir": str(output_dir),
        "seed": job.seed,
        "dtype": dtype,
        "hyperparameters": job.hyperparameters.to_dict(),
    }


def log_tail(path: Path, lines: int) -> str:
    """The last lines of a log file (progress bars' carriage returns folded)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines() if row.strip()]
    return "\n".join(rows[-lines:])


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class LocalRunner:
    """Claims queued `local` jobs and runs their trainers, a few at a time."""

    def __init__(
        self, settings: TrainingSettings, jobs: Jobs, blobs: BlobStore, promotion: Promotion
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        self.promotion = promotion
        self.work_dir = settings.resolved_work_dir()
        self._running: dict[str, asyncio.Task[None]] = {}

    async def check_environment(self) -> str | None:
        """Why this runner cannot start trainers, or None (logged at start; jobs fail with it)."""
        return await trainer_environment.problem(self.settings.trainer_python)

    async def reconcile(self) -> list[str]:
        """Fails the jobs an earlier process of this service left unfinished (and stops their
        trainers if they still run): a local trainer cannot be re-attached to."""
        failed = []
        for job in await asyncio.to_thread(self.jobs.unfinished, RUNNER):
            if job.runner_ref and job.runner_ref.isdigit():
                _kill_group(int(job.runner_ref), signal.SIGKILL)
            tail = log_tail(self.work_dir / job.id / "trainer.log", self.settings.log_tail_lines)
            message = (
                f"the training service restarted while the job was {job.status}; "
                "the trainer was stopped"
            )
            if tail:
                message += f". Trainer log (last lines):\n{tail}"
            if await asyncio.to_thread(self.jobs.fail, job.id, "service_restarted", message):
                failed.append(job.id)
        return failed

    async def run(self) -> None:
        """Claims and starts jobs until cancelled."""
        try:
            while True:
                while len(self._running) < self.settings.max_concurrent_jobs:
                    job = await asyncio.to_thread(self.jobs.claim_next, RUNNER)
                    if job is None:
                        break
                    task = asyncio.create_task(self._run_job(job))
                    self._running[job.id] = task
                    task.add_done_callback(self._forget)
                await asyncio.sleep(self.settings.poll_seconds)
        finally:
            for task in list(self._running.values()):
                task.cancel()
            for task in list(self._running.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _forget(self, task: asyncio.Task[None]) -> None:
        for job_id, running in list(self._running.items()):
            if running is task:
                del self._running[job_id]

    async def _run_job(self, job: JobView) -> None:
        try:
            await self._train(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("training job failed in the runner", extra={"job_id": job.id})
            await asyncio.to_thread(
                self.jobs.fail, job.id, "runner_error", f"{type(exc).__name__}: {exc}"
            )

    async def _train(self, job: JobView) -> None:
        # A job this runner cannot run fails saying what to install, before anything starts.
        problem = await self.check_environment()
        if problem is not None:
            await asyncio.to_thread(self.jobs.fail, job.id, TRAINER_UNAVAILABLE, problem)
            return
        job_dir = self.work_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        train_file = job_dir / "train.jsonl"
        data = await asyncio.to_thread(read_bytes, self.blobs, f"{job.id}-train")
        train_file.write_bytes(data)
        config = trainer_config(
            job, train_file=train_file, output_dir=job_dir / "output", dtype=self.settings.dtype
        )
        config_path = job_dir / "config.json"
        config_path.write_bytes(orjson.dumps(config))
        log_path = job_dir / "trainer.log"
        recorder = ProgressRecorder(self.jobs, self.blobs, job.id)
        with log_path.open("ab") as log_file:
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.settings.trainer_python,
                    str(TRAINER_SCRIPT),
                    str(config_path),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log_file,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            except OSError as exc:  # removed since the check
                message = (
                    f"the trainer's python {self.settings.trainer_python} cannot be started "
                    f"({exc.strerror}); {trainer_environment.INSTALL_HINT}"
                )
                await asyncio.to_thread(self.jobs.fail, job.id, TRAINER_UNAVAILABLE, message)
                return
        await asyncio.to_thread(self.jobs.set_runner_ref, job.id, str(proc.pid))
        await asyncio.to_thread(
            self.jobs.add_event, job.id, "info", f"Trainer started (local process {proc.pid})"
        )
        watcher = asyncio.create_task(self._watch_cancel(job.id, proc))
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").strip()
                if line:
                    await asyncio.to_thread(recorder.handle_line, line)
            returncode = await proc.wait()
        except asyncio.CancelledError:
            # The service is stopping: the trainer must not outlive it unobserved.
            _kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            raise
        finally:
            watcher.cancel()
        status = await asyncio.to_thread(self.jobs.status_of, job.id)
        if status == CANCELLED:
            steps = recorder.outcome.checkpoints
            kept = f"; last checkpoint at step {steps[-1]}" if steps else ""
            await asyncio.to_thread(
                self.jobs.add_event, job.id, "info", f"Trainer stopped after the cancel{kept}"
            )
            return
        if status != RUNNING:
            return
        done = recorder.outcome.done
        if returncode != 0 or done is None:
            if returncode < 0:
                how = f"was killed by signal {signal.Signals(-returncode).name}"
            else:
                how = f"exited with status {returncode}"
            if returncode == 0:
                how += " without reporting a finished adapter"
            tail = log_tail(log_path, self.settings.log_tail_lines)
            message = f"the trainer {how}"
            if tail:
                message += f". Trainer log (last lines):\n{tail}"
            await asyncio.to_thread(self.jobs.fail, job.id, "trainer_failed", message)
            return
        await self.promotion.finish(job, Path(str(done["adapter_dir"])), done)

    async def _watch_cancel(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the trainer once the job is cancelled; SIGKILL after the grace period."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            if await asyncio.to_thread(self.jobs.status_of, job_id) == CANCELLED:
                break
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.cancel_grace_seconds)
        except TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
