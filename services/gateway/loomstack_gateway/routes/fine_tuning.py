"""`/v1/fine_tuning/jobs`: OpenAI's fine-tuning API over the training service.

The request and response shapes are OpenAI's, so `client.fine_tuning.jobs.*` of the official
client works unchanged. Loomstack's extra settings (LoRA rank/alpha/dropout/target modules,
learning rate, max steps, max sequence length, save steps) go in
`method.supervised.hyperparameters` next to OpenAI's `n_epochs`, `batch_size` and
`learning_rate_multiplier`; `"auto"` leaves a setting to the service's default.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from google.protobuf.message import Message
from pydantic import ConfigDict
from starlette.responses import Response

from loomstack.training.v1 import training_pb2
from loomstack_kit.errors import InvalidArgument

from .auth import caller_of
from .direct_routes import direct
from .request_fields import Int64, RequestBody
from .responses import OrjsonResponse
from .settings import GatewaySettings
from .upstream import Training

_PREFIX = "FINE_TUNING_JOB_STATUS_"
JOB_STATUS_NAMES: dict[int, str] = {
    value: name.removeprefix(_PREFIX).lower()
    for name, value in training_pb2.FineTuningJobStatus.items()
    if value != training_pb2.FINE_TUNING_JOB_STATUS_UNSPECIFIED
}
_LEVELS = {
    training_pb2.EVENT_LEVEL_INFO: "info",
    training_pb2.EVENT_LEVEL_WARN: "warn",
    training_pb2.EVENT_LEVEL_ERROR: "error",
}
_INT_HP = (
    "n_epochs",
    "batch_size",
    "max_steps",
    "max_seq_length",
    "lora_r",
    "lora_alpha",
    "save_steps",
)
_FLOAT_HP = ("learning_rate_multiplier", "learning_rate", "lora_dropout")


class CreateJobBody(RequestBody):
    """OpenAI's create-fine-tuning-job body."""

    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = None
    seed: Int64 | None = None
    metadata: dict[str, str] | None = None


def _given_hyperparameters(body: CreateJobBody) -> dict[str, Any]:
    """`method.supervised.hyperparameters` over the older top-level `hyperparameters`."""
    given: dict[str, Any] = dict(body.hyperparameters or {})
    method = body.method or {}
    if method:
        kind = method.get("type", "supervised")
        if kind != "supervised":
            raise InvalidArgument(
                f"method.type {kind!r} is not supported: use 'supervised'", param="method.type"
            )
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise InvalidArgument("method.supervised must be an object", param="method.supervised")
        nested = supervised.get("hyperparameters") or {}
        if not isinstance(nested, dict):
            raise InvalidArgument(
                "method.supervised.hyperparameters must be an object",
                param="method.supervised.hyperparameters",
            )
        given.update(nested)
    return given


def hyperparameters_request(body: CreateJobBody) -> training_pb2.Hyperparameters:
    """The hyperparameters a body names; `"auto"` or null leaves one to the service."""
    hp = training_pb2.Hyperparameters()
    for name, value in _given_hyperparameters(body).items():
        if value is None or value == "auto":
            continue
        param = f"hyperparameters.{name}"
        try:
            if name in _INT_HP:
                if isinstance(value, bool) or int(value) != value:
                    raise ValueError(value)
                # An int32 field: a larger number raises ValueError here.
                setattr(hp, name, int(value))
            elif name in _FLOAT_HP:
                number = float(value)
                if isinstance(value, bool) or not math.isfinite(number):
                    raise ValueError(value)
                setattr(hp, name, number)
            elif name == "lora_target_modules":
                if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                    raise ValueError(value)
                hp.lora_target_modules.extend(value)
            else:
                raise InvalidArgument(f"unknown hyperparameter {name!r}", param=param)
        # OverflowError: int() of an infinite float, float() of an integer past 1e308.
        except (TypeError, ValueError, OverflowError):
            raise InvalidArgument(f"{param} has an invalid value {value!r}", param=param) from None
    return hp


def _seconds(msg: Message, field: str) -> int | None:
    if not msg.HasField(field):
        return None
    seconds: int = getattr(msg, field).seconds
    return seconds


def _metrics(m: training_pb2.StepMetrics) -> dict[str, Any]:
    return {
        "step": m.step,
        "train_loss": m.train_loss,
        "learning_rate": m.learning_rate,
        "tokens_per_second": m.tokens_per_second,
        "epoch": m.epoch,
        "trained_tokens": m.trained_tokens,
    }


def job_object(job: training_pb2.FineTuningJob) -> dict[str, Any]:
    """OpenAI's `fine_tuning.job` object (+ steps, the eval result and the runner)."""
    hp = job.hyperparameters
    hyperparameters: dict[str, Any] = {
        "n_epochs": hp.n_epochs,
        "batch_size": hp.batch_size,
        "learning_rate_multiplier": "auto",
        "learning_rate": hp.learning_rate,
        "max_seq_length": hp.max_seq_length,
        "lora_r": hp.lora_r,
        "lora_alpha": hp.lora_alpha,
        "lora_dropout": hp.lora_dropout,
        "lora_target_modules": list(hp.lora_target_modules),
        "max_steps": hp.max_steps if hp.HasField("max_steps") else None,
        "save_steps": hp.save_steps if hp.HasField("save_steps") else None,
    }
    evaluation = None
    if job.HasField("eval"):
        e = job.eval
        evaluation = {
            "examples": e.examples,
            "base": {"exact_match": e.base_exact_match, "token_overlap": e.base_token_overlap},
            "fine_tuned": {
                "exact_match": e.fine_tuned_exact_match,
                "token_overlap": e.fine_tuned_token_overlap,
            },
            "required_margin": e.required_margin,
            "promoted": e.promoted,
        }
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": job.create_time.seconds,
        "finished_at": _seconds(job, "finish_time"),
        "fine_tuned_model": job.fine_tuned_model or None,
        "organization_id": job.project,
        "result_files": list(job.result_files),
        "status": JOB_STATUS_NAMES.get(job.status, "validating_files"),
        "validation_file": job.validation_file or None,
        "training_file": job.training_file,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "trained_tokens": job.trained_tokens if job.trained_tokens else None,
        "error": (
            {
                "code": job.error.code,
                "message": job.error.message,
                "param": job.error.param or None,
            }
            if job.HasField("error")
            else None
        ),
        "user_provided_suffix": job.suffix or None,
        "seed": job.seed,
        "estimated_finish": None,
        "integrations": [],
        "metadata": dict(job.metadata) or None,
        "trained_steps": job.trained_steps,
        "total_steps": job.total_steps,
        "eval": evaluation,
        "runner": job.runner,
    }


def event_object(e: training_pb2.FineTuningJobEvent) -> dict[str, Any]:
    """OpenAI's `fine_tuning.job.event` (metrics events carry the step's metrics in `data`)."""
    return {
        "object": "fine_tuning.job.event",
        "id": e.id,
        "created_at": e.create_time.seconds,
        "level": _LEVELS.get(e.level, "info"),
        "message": e.message,
        "type": e.type or "message",
        "data": _metrics(e.metrics) if e.HasField("metrics") else {},
    }


def checkpoint_object(c: training_pb2.FineTuningJobCheckpoint) -> dict[str, Any]:
    """OpenAI's `fine_tuning.job.checkpoint`."""
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": c.id,
        "created_at": c.create_time.seconds,
        "fine_tuned_model_checkpoint": c.fine_tuned_model_checkpoint,
        "fine_tuning_job_id": c.fine_tuning_job_id,
        "metrics": _metrics(c.metrics),
        "step_number": c.step_number,
    }


def _list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def fine_tuning_router(training: Training, settings: GatewaySettings) -> APIRouter:
    """The fine-tuning routes, bound to the training service's client."""
    router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
    timeout = settings.upstream_timeout_seconds

    @router.post("", summary="Create a fine-tuning job")
    async def create_job(request: Request, body: CreateJobBody) -> Response:
        req = training_pb2.CreateFineTuningJobRequest(
            model=body.model,
            training_file=body.training_file,
            validation_file=body.validation_file or "",
            hyperparameters=hyperparameters_request(body),
            suffix=body.suffix or "",
            metadata=body.metadata or {},
        )
        if body.seed is not None:
            req.seed = body.seed
        # The files' content is checked after this returns (the job is `validating_files`).
        resp = await training.jobs.CreateFineTuningJob(
            req, metadata=caller_of(request).metadata, timeout=timeout
        )
        return OrjsonResponse(job_object(resp))

    @router.get("", summary="List fine-tuning jobs")
    async def list_jobs(
        request: Request, after: str = "", limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> Response:
        resp = await training.jobs.ListFineTuningJobs(
            training_pb2.ListFineTuningJobsRequest(page_size=limit, page_token=after),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(_list([job_object(j) for j in resp.jobs], bool(resp.next_page_token)))

    @router.get("/{job_id}", summary="Retrieve a fine-tuning job")
    @direct
    async def get_job(request: Request, job_id: str) -> Response:
        resp = await training.jobs.GetFineTuningJob(
            training_pb2.GetFineTuningJobRequest(job_id=job_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(job_object(resp))

    @router.post("/{job_id}/cancel", summary="Cancel a fine-tuning job")
    async def cancel_job(request: Request, job_id: str) -> Response:
        resp = await training.jobs.CancelFineTuningJob(
            training_pb2.CancelFineTuningJobRequest(job_id=job_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(job_object(resp))

    @router.get("/{job_id}/events", summary="List a fine-tuning job's events")
    async def list_events(
        request: Request,
        job_id: str,
        after: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> Response:
        resp = await training.jobs.ListFineTuningJobEvents(
            training_pb2.ListFineTuningJobEventsRequest(
                job_id=job_id, page_size=limit, page_token=after
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            _list([event_object(e) for e in resp.events], bool(resp.next_page_token))
        )

    @router.get("/{job_id}/checkpoints", summary="List a fine-tuning job's checkpoints")
    async def list_checkpoints(
        request: Request,
        job_id: str,
        after: str = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> Response:
        resp = await training.jobs.ListFineTuningJobCheckpoints(
            training_pb2.ListFineTuningJobCheckpointsRequest(
                job_id=job_id, page_size=limit, page_token=after
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(
            _list([checkpoint_object(c) for c in resp.checkpoints], bool(resp.next_page_token))
        )

    return router
