"""Fine-tuning protos → OpenAI's fine-tuning objects: jobs, their events and checkpoints."""

from __future__ import annotations

from typing import Any

from loomstack.training.v1 import training_pb2

from .common import seconds

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
        "finished_at": seconds(job, "finish_time"),
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
