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
from pydantic import ConfigDict
from starlette.responses import Response

from loomstack.training.v1 import training_pb2
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.list_page import page

from ..auth import caller_of
from ..direct_routes import direct
from ..request_fields import Int64, RequestBody
from ..responses import OrjsonResponse
from ..settings import GatewaySettings
from ..shapes.fine_tuning import checkpoint_object, event_object, job_object
from ..upstream import Training

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
        return OrjsonResponse(page([job_object(j) for j in resp.jobs], bool(resp.next_page_token)))

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
            page([event_object(e) for e in resp.events], bool(resp.next_page_token))
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
            page([checkpoint_object(c) for c in resp.checkpoints], bool(resp.next_page_token))
        )

    return router
