"""Fine-tuning jobs in the database: the state machine, events, metrics and checkpoints.

`validating_files → queued → running → succeeded | failed | cancelled`. Every transition is a
conditional update on the current status, so a runner finishing a job that was cancelled
meanwhile cannot resurrect it, and a job is never left `running` by a dead runner: the runner
reports the trainer's exit, and `reconcile` fails what a previous process left running.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import FailedPrecondition, NotFound

from .tables import checkpoints, events, jobs
from .validation import Hyperparameters

VALIDATING, QUEUED, RUNNING = "validating_files", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
TRANSITIONS: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({QUEUED, FAILED, CANCELLED}),
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
}


@dataclass(frozen=True)
class JobView:
    """A job as callers see it."""

    id: str
    project: str
    model: str
    base_model_path: str
    training_file: str
    validation_file: str | None
    suffix: str
    seed: int
    hyperparameters: Hyperparameters
    metadata: dict[str, str]
    status: str
    runner: str
    runner_ref: str | None
    fine_tuned_model: str | None
    trained_tokens: int
    trained_steps: int
    total_steps: int
    error: dict[str, str] | None
    result_files: list[str]
    eval: dict[str, Any] | None
    adapter_blob_id: str | None
    created_at: float
    started_at: float | None
    first_step_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class EventView:
    """One event of a job's log."""

    sequence: int
    level: str
    type: str
    message: str
    metrics: dict[str, Any] | None
    created_at: float


@dataclass(frozen=True)
class CheckpointView:
    """A saved checkpoint."""

    id: str
    job_id: str
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    blob_id: str = ""
    created_at: float = 0.0


def _view(row: Any) -> JobView:
    return JobView(
        id=row.id,
        project=row.project,
        model=row.model,
        base_model_path=row.base_model_path,
        training_file=row.training_file,
        validation_file=row.validation_file,
        suffix=row.suffix,
        seed=row.seed,
        hyperparameters=Hyperparameters.from_dict(orjson.loads(row.hyperparameters_json)),
        metadata=orjson.loads(row.metadata_json),
        status=row.status,
        runner=row.runner,
        runner_ref=row.runner_ref,
        fine_tuned_model=row.fine_tuned_model,
        trained_tokens=row.trained_tokens,
        trained_steps=row.trained_steps,
        total_steps=row.total_steps,
        error=orjson.loads(row.error_json) if row.error_json else None,
        result_files=orjson.loads(row.result_files_json),
        eval=orjson.loads(row.eval_json) if row.eval_json else None,
        adapter_blob_id=row.adapter_blob_id,
        created_at=row.created_at,
        started_at=row.started_at,
        first_step_at=row.first_step_at,
        finished_at=row.finished_at,
    )


def fine_tuned_model_name(base: str, suffix: str, job_id: str) -> str:
    """OpenAI's naming: `ft:<base>:<suffix>:<job id>` (the suffix part empty when unset)."""
    return f"ft:{base}:{suffix}:{job_id}"


class Jobs:
    """Jobs, events and checkpoints of the training database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- creation and reads -------------------------------------------------------------

    def create(
        self,
        *,
        project: str,
        model: str,
        base_model_path: str,
        training_file: str,
        validation_file: str | None,
        suffix: str,
        seed: int,
        hyperparameters: Hyperparameters,
        metadata: dict[str, str],
        runner: str,
    ) -> JobView:
        """A new job in `validating_files`."""
        job_id = f"ftjob-{secrets.token_hex(12)}"
        now = time.time()
        with write_transaction(self.engine) as conn:
            conn.execute(
                jobs.insert().values(
                    id=job_id,
                    project=project,
                    model=model,
                    base_model_path=base_model_path,
                    training_file=training_file,
                    validation_file=validation_file,
                    suffix=suffix,
                    seed=seed,
                    hyperparameters_json=orjson.dumps(hyperparameters.to_dict()).decode(),
                    metadata_json=orjson.dumps(metadata).decode(),
                    status=VALIDATING,
                    runner=runner,
                    created_at=now,
                )
            )
            self._event(conn, job_id, "info", f"Validating training file: {training_file}")
        return self.get(None, job_id)

    def get(self, project: str | None, job_id: str) -> JobView:
        """One job of the project (None = any project), or NotFound."""
        query = sa.select(jobs).where(jobs.c.id == job_id)
        if project is not None:
            query = query.where(jobs.c.project == project)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no fine-tuning job {job_id!r}", param="fine_tuning_job_id")
        return _view(row)

    def list_jobs(
        self, project: str | None, limit: int = 20, after: str = ""
    ) -> tuple[list[JobView], bool]:
        """A page of jobs, newest first, and whether more follow."""
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        if project is not None:
            query = query.where(jobs.c.project == project)
        if after:
            anchor = self.get(project, after)
            query = query.where(
                sa.or_(
                    jobs.c.created_at < anchor.created_at,
                    sa.and_(jobs.c.created_at == anchor.created_at, jobs.c.id < anchor.id),
                )
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit + 1)).all()
        return [_view(r) for r in rows[:limit]], len(rows) > limit

    def events(
        self, project: str | None, job_id: str, limit: int = 20, after: int = 0
    ) -> tuple[list[EventView], bool]:
        """A page of the job's events, newest first; `after` is the last sequence seen."""
        self.get(project, job_id)
        query = (
            sa.select(events).where(events.c.job_id == job_id).order_by(events.c.sequence.desc())
        )
        if after:
            query = query.where(events.c.sequence < after)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit + 1)).all()
        out = [
            EventView(
                r.sequence,
                r.level,
                r.type,
                r.message,
                orjson.loads(r.metrics_json) if r.metrics_json else None,
                r.created_at,
            )
            for r in rows[:limit]
        ]
        return out, len(rows) > limit

    def checkpoints(
        self, project: str | None, job_id: str, limit: int = 10, after: str = ""
    ) -> tuple[list[CheckpointView], bool]:
        """A page of the job's checkpoints, newest (highest step) first."""
        self.get(project, job_id)
        query = (
            sa.select(checkpoints)
            .where(checkpoints.c.job_id == job_id)
            .order_by(checkpoints.c.step.desc())
        )
        with self.engine.connect() as conn:
            if after:
                # The cursor is one of this job's checkpoints: another job's (another
                # project's) would tell its step.
                anchor = conn.execute(
                    sa.select(checkpoints.c.step).where(
                        checkpoints.c.id == after, checkpoints.c.job_id == job_id
                    )
                ).scalar()
                if anchor is not None:
                    query = query.where(checkpoints.c.step < anchor)
            rows = conn.execute(query.limit(limit + 1)).all()
        out = [
            CheckpointView(
                r.id, r.job_id, r.step, orjson.loads(r.metrics_json), r.blob_id, r.created_at
            )
            for r in rows[:limit]
        ]
        return out, len(rows) > limit

    # --- transitions --------------------------------------------------------------------

    def _move(self, conn: sa.Connection, job_id: str, to: str, **values: Any) -> bool:
        allowed_from = [s for s, targets in TRANSITIONS.items() if to in targets]
        if to in TERMINAL:
            values.setdefault("finished_at", time.time())
        updated = conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status.in_(allowed_from))
            .values(status=to, **values)
        ).rowcount
        return bool(updated)

    def mark_queued(self, job_id: str, message: str) -> None:
        """Files checked: the job waits for a runner."""
        with write_transaction(self.engine) as conn:
            if self._move(conn, job_id, QUEUED):
                self._event(conn, job_id, "info", message)

    def claim_next(self, runner: str) -> JobView | None:
        """The oldest queued job of this runner, now `running`, or None."""
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.status == QUEUED, jobs.c.runner == runner)
                .order_by(jobs.c.created_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            if not self._move(conn, row.id, RUNNING, started_at=time.time()):
                return None
            self._event(conn, row.id, "info", "Fine-tuning job started")
        return self.get(None, row.id)

    def set_runner_ref(self, job_id: str, ref: str) -> None:
        """Where the trainer runs (a pid, a Kubernetes Job name), for reconcile and cancel."""
        with write_transaction(self.engine) as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(runner_ref=ref))

    def fail(self, job_id: str, code: str, message: str, param: str = "") -> bool:
        """To `failed` with OpenAI's error object; False when the job was already final."""
        error = {"code": code, "message": message, "param": param}
        with write_transaction(self.engine) as conn:
            moved = self._move(conn, job_id, FAILED, error_json=orjson.dumps(error).decode())
            if moved:
                self._event(conn, job_id, "error", f"Fine-tuning job failed: {message}")
        return moved

    def cancel(self, project: str | None, job_id: str) -> JobView:
        """Cancels at once; a running trainer is stopped by its runner (keeping a checkpoint)."""
        job = self.get(project, job_id)
        if job.status in TERMINAL:
            raise FailedPrecondition(
                f"fine-tuning job {job_id} is already {job.status}", param="fine_tuning_job_id"
            )
        with write_transaction(self.engine) as conn:
            if self._move(conn, job_id, CANCELLED, cancel_requested=True):
                self._event(conn, job_id, "info", "Fine-tuning job cancelled")
        return self.get(project, job_id)

    def status_of(self, job_id: str) -> str:
        """The current status (the runner polls it to notice a cancel)."""
        with self.engine.connect() as conn:
            status = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        return str(status)

    def succeed(
        self,
        job_id: str,
        *,
        fine_tuned_model: str | None,
        trained_tokens: int,
        trained_steps: int,
        result_files: list[str],
        adapter_blob_id: str,
        eval_result: dict[str, Any] | None,
        message: str,
    ) -> bool:
        """To `succeeded`; False when the job was cancelled meanwhile."""
        with write_transaction(self.engine) as conn:
            moved = self._move(
                conn,
                job_id,
                SUCCEEDED,
                fine_tuned_model=fine_tuned_model,
                trained_tokens=trained_tokens,
                trained_steps=trained_steps,
                result_files_json=orjson.dumps(result_files).decode(),
                adapter_blob_id=adapter_blob_id,
                eval_json=orjson.dumps(eval_result).decode() if eval_result else None,
            )
            if moved:
                self._event(conn, job_id, "info", message)
        return moved

    # --- progress -----------------------------------------------------------------------

    def add_event(self, job_id: str, level: str, message: str) -> None:
        """A message event."""
        with write_transaction(self.engine) as conn:
            self._event(conn, job_id, level, message)

    def set_total_steps(self, job_id: str, total_steps: int) -> None:
        """The number of optimizer steps the trainer plans."""
        with write_transaction(self.engine) as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(total_steps=total_steps))

    def record_step(self, job_id: str, metrics: dict[str, Any]) -> None:
        """A metrics event, and the job's step and token counters."""
        now = time.time()
        with write_transaction(self.engine) as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    trained_steps=int(metrics["step"]),
                    trained_tokens=int(metrics.get("trained_tokens", 0)),
                    first_step_at=sa.func.coalesce(jobs.c.first_step_at, now),
                )
            )
            self._event(
                conn,
                job_id,
                "info",
                f"Step {metrics['step']}/{metrics.get('total_steps', '?')}: "
                f"training loss={metrics['train_loss']:.4f}",
                metrics=metrics,
            )

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any], blob_id: str) -> str:
        """Records a saved checkpoint; returns its id."""
        checkpoint_id = f"ftckpt-{secrets.token_hex(12)}"
        with write_transaction(self.engine) as conn:
            conn.execute(
                checkpoints.insert().values(
                    id=checkpoint_id,
                    job_id=job_id,
                    step=step,
                    metrics_json=orjson.dumps(metrics).decode(),
                    blob_id=blob_id,
                    created_at=time.time(),
                )
            )
            self._event(conn, job_id, "info", f"Checkpoint saved at step {step}")
        return checkpoint_id

    def step_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Every step's metrics in step order (the result CSV)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events.c.metrics_json)
                .where(events.c.job_id == job_id, events.c.type == "metrics")
                .order_by(events.c.sequence)
            ).all()
        return [orjson.loads(r.metrics_json) for r in rows]

    def unfinished(self, runner: str) -> list[JobView]:
        """Jobs of this runner a previous process left `running`."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs).where(jobs.c.runner == runner, jobs.c.status == RUNNING)
            ).all()
        return [_view(r) for r in rows]

    def validating(self) -> list[JobView]:
        """Jobs whose files are still to be checked, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs).where(jobs.c.status == VALIDATING).order_by(jobs.c.created_at)
            ).all()
        return [_view(r) for r in rows]

    @staticmethod
    def _event(
        conn: sa.Connection,
        job_id: str,
        level: str,
        message: str,
        *,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            events.insert().values(
                job_id=job_id,
                level=level,
                type="metrics" if metrics is not None else "message",
                message=message,
                metrics_json=orjson.dumps(metrics).decode() if metrics is not None else None,
                created_at=time.time(),
            )
        )
