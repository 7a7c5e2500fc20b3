"""gRPC servicer: converts protos to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from loomstack.training.v1 import training_pb2, training_pb2_grpc
from loomstack_kit.identity import owner_project, project_of

from .jobs import CheckpointView, EventView, Jobs, JobView
from .submission import Submissions

_STATUS = {
    "validating_files": training_pb2.FINE_TUNING_JOB_STATUS_VALIDATING_FILES,
    "queued": training_pb2.FINE_TUNING_JOB_STATUS_QUEUED,
    "running": training_pb2.FINE_TUNING_JOB_STATUS_RUNNING,
    "succeeded": training_pb2.FINE_TUNING_JOB_STATUS_SUCCEEDED,
    "failed": training_pb2.FINE_TUNING_JOB_STATUS_FAILED,
    "cancelled": training_pb2.FINE_TUNING_JOB_STATUS_CANCELLED,
}
_LEVEL = {
    "info": training_pb2.EVENT_LEVEL_INFO,
    "warn": training_pb2.EVENT_LEVEL_WARN,
    "error": training_pb2.EVENT_LEVEL_ERROR,
}
_OPTIONAL_HP = (
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "learning_rate",
    "max_steps",
    "max_seq_length",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "save_steps",
)


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _metrics(data: dict[str, Any] | None) -> training_pb2.StepMetrics:
    data = data or {}
    return training_pb2.StepMetrics(
        step=int(data.get("step", 0)),
        train_loss=float(data.get("train_loss", 0.0)),
        learning_rate=float(data.get("learning_rate", 0.0)),
        tokens_per_second=float(data.get("tokens_per_second", 0.0)),
        epoch=float(data.get("epoch", 0.0)),
        trained_tokens=int(data.get("trained_tokens", 0)),
    )


def hyperparameters_from_proto(hp: training_pb2.Hyperparameters) -> dict[str, Any]:
    """Only the fields the caller set (unset ones take the service defaults)."""
    given: dict[str, Any] = {
        name: getattr(hp, name)
        for name in _OPTIONAL_HP
        if hp.HasField(name)  # type: ignore[arg-type]
    }
    if hp.lora_target_modules:
        given["lora_target_modules"] = list(hp.lora_target_modules)
    return given


def job_to_proto(job: JobView) -> training_pb2.FineTuningJob:
    """Domain job → proto."""
    hp = job.hyperparameters
    msg = training_pb2.FineTuningJob(
        id=job.id,
        model=job.model,
        status=_STATUS[job.status],
        training_file=job.training_file,
        validation_file=job.validation_file or "",
        hyperparameters=training_pb2.Hyperparameters(
            n_epochs=hp.n_epochs,
            batch_size=hp.batch_size,
            learning_rate=hp.learning_rate,
            max_seq_length=hp.max_seq_length,
            lora_r=hp.lora_r,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            lora_target_modules=list(hp.lora_target_modules),
            max_steps=hp.max_steps,
            save_steps=hp.save_steps,
        ),
        suffix=job.suffix,
        seed=job.seed,
        fine_tuned_model=job.fine_tuned_model or "",
        trained_tokens=job.trained_tokens,
        result_files=job.result_files,
        create_time=_ts(job.created_at),
        project=job.project,
        metadata=job.metadata,
        trained_steps=job.trained_steps,
        total_steps=job.total_steps,
        runner=job.runner,
    )
    if job.finished_at is not None:
        msg.finish_time.CopyFrom(_ts(job.finished_at))
    if job.error:
        msg.error.CopyFrom(training_pb2.FineTuningJobError(**job.error))
    if job.eval:
        msg.eval.CopyFrom(training_pb2.EvalResult(**job.eval))
    return msg


def event_to_proto(event: EventView) -> training_pb2.FineTuningJobEvent:
    """Domain event → proto."""
    msg = training_pb2.FineTuningJobEvent(
        id=f"ftevent-{event.sequence}",
        create_time=_ts(event.created_at),
        level=_LEVEL.get(event.level, training_pb2.EVENT_LEVEL_INFO),
        message=event.message,
        type=event.type,
    )
    if event.metrics is not None:
        msg.metrics.CopyFrom(_metrics(event.metrics))
    return msg


def checkpoint_to_proto(
    checkpoint: CheckpointView, job: JobView
) -> training_pb2.FineTuningJobCheckpoint:
    """Domain checkpoint → proto."""
    return training_pb2.FineTuningJobCheckpoint(
        id=checkpoint.id,
        create_time=_ts(checkpoint.created_at),
        fine_tuning_job_id=checkpoint.job_id,
        step_number=checkpoint.step,
        metrics=_metrics(checkpoint.metrics),
        fine_tuned_model_checkpoint=(
            f"ft:{job.model}:{job.suffix}:{job.id}:ckpt-step-{checkpoint.step}"
        ),
        blob_id=checkpoint.blob_id,
    )


def _event_cursor(token: str) -> int:
    return int(token.removeprefix("ftevent-")) if token.removeprefix("ftevent-").isdigit() else 0


class FineTuningServicer(training_pb2_grpc.FineTuningServiceServicer):
    """Fine-tuning jobs over gRPC."""

    def __init__(self, jobs: Jobs, submissions: Submissions, runner: str) -> None:
        self.jobs = jobs
        self.submissions = submissions
        self.runner = runner

    async def CreateFineTuningJob(
        self, request: training_pb2.CreateFineTuningJobRequest, context: Any
    ) -> training_pb2.FineTuningJob:
        job = await asyncio.to_thread(
            self.submissions.create,
            owner_project(project_of(context)),
            model=request.model,
            training_file=request.training_file,
            validation_file=request.validation_file,
            hyperparameters=hyperparameters_from_proto(request.hyperparameters),
            suffix=request.suffix,
            seed=request.seed if request.HasField("seed") else None,
            metadata=dict(request.metadata),
            runner=self.runner,
        )
        self.submissions.start_validation(job.id)
        return job_to_proto(job)

    async def GetFineTuningJob(
        self, request: training_pb2.GetFineTuningJobRequest, context: Any
    ) -> training_pb2.FineTuningJob:
        job = await asyncio.to_thread(self.jobs.get, project_of(context), request.job_id)
        return job_to_proto(job)

    async def ListFineTuningJobs(
        self, request: training_pb2.ListFineTuningJobsRequest, context: Any
    ) -> training_pb2.ListFineTuningJobsResponse:
        limit = min(request.page_size or 20, 100)
        page, more = await asyncio.to_thread(
            self.jobs.list_jobs, project_of(context), limit, request.page_token
        )
        return training_pb2.ListFineTuningJobsResponse(
            jobs=[job_to_proto(j) for j in page], next_page_token=page[-1].id if more else ""
        )

    async def CancelFineTuningJob(
        self, request: training_pb2.CancelFineTuningJobRequest, context: Any
    ) -> training_pb2.FineTuningJob:
        job = await asyncio.to_thread(self.jobs.cancel, project_of(context), request.job_id)
        return job_to_proto(job)

    async def ListFineTuningJobEvents(
        self, request: training_pb2.ListFineTuningJobEventsRequest, context: Any
    ) -> training_pb2.ListFineTuningJobEventsResponse:
        limit = min(request.page_size or 20, 1000)
        page, more = await asyncio.to_thread(
            self.jobs.events,
            project_of(context),
            request.job_id,
            limit,
            _event_cursor(request.page_token),
        )
        events = [event_to_proto(e) for e in page]
        return training_pb2.ListFineTuningJobEventsResponse(
            events=events, next_page_token=events[-1].id if more else ""
        )

    async def ListFineTuningJobCheckpoints(
        self, request: training_pb2.ListFineTuningJobCheckpointsRequest, context: Any
    ) -> training_pb2.ListFineTuningJobCheckpointsResponse:
        project = project_of(context)
        limit = min(request.page_size or 10, 100)
        job = await asyncio.to_thread(self.jobs.get, project, request.job_id)
        page, more = await asyncio.to_thread(
            self.jobs.checkpoints, project, request.job_id, limit, request.page_token
        )
        return training_pb2.ListFineTuningJobCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(c, job) for c in page],
            next_page_token=page[-1].id if more else "",
        )
