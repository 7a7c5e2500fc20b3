"""Creating a job: every check happens here, before a job is queued.

Unknown base model, out-of-range hyperparameters, a bad suffix or metadata, a file that is not
a fine-tuning file, invalid lines (with line numbers), wrong roles, examples without an
assistant turn, too few examples, examples over the token limit and a validation file in
another format than the training file are all INVALID_ARGUMENT (HTTP 400) and store nothing.
The checked examples are stored as chat JSONL in the blob store for the runner.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from loomstack_kit.blobstore import BlobStore
from loomstack_kit.errors import InvalidArgument

from .artifacts import store_bytes
from .inference import InferenceClient
from .jobs import Jobs, JobView
from .settings import TrainingSettings
from .validation import (
    ChatTokenCounter,
    Defaults,
    Messages,
    check_suffix,
    parse_training_file,
    resolve_hyperparameters,
)

FINE_TUNE_PURPOSE = "fine-tune"


def _jsonl(examples: list[Messages]) -> bytes:
    return b"".join(orjson.dumps({"messages": m}) + b"\n" for m in examples)


class Submissions:
    """Validates requests and queues jobs."""

    def __init__(
        self,
        settings: TrainingSettings,
        jobs: Jobs,
        blobs: BlobStore,
        inference: InferenceClient,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        self.inference = inference
        self._counters: dict[str, ChatTokenCounter] = {}
        self.defaults = Defaults(
            n_epochs=settings.default_n_epochs,
            batch_size=settings.default_batch_size,
            learning_rate=settings.default_learning_rate,
            max_seq_length=settings.max_seq_length,
            lora_r=settings.default_lora_r,
            lora_alpha=settings.default_lora_alpha,
            lora_dropout=settings.default_lora_dropout,
            lora_target_modules=tuple(
                m.strip() for m in settings.default_lora_target_modules.split(",") if m.strip()
            ),
        )

    def _counter(self, model_path: str) -> ChatTokenCounter:
        if model_path not in self._counters:
            self._counters[model_path] = ChatTokenCounter(model_path)
        return self._counters[model_path]

    def _read(self, project: str, file_id: str, param: str) -> bytes:
        purpose = self.inference.file_purpose(project, file_id, param=param)
        if purpose != FINE_TUNE_PURPOSE:
            raise InvalidArgument(
                f"{param} {file_id} has purpose {purpose!r}; upload it with purpose 'fine-tune'",
                code=f"invalid_{param}",
                param=param,
            )
        return self.inference.read_file(
            project, file_id, param=param, max_bytes=self.settings.max_file_bytes
        )

    def create(
        self,
        project: str,
        *,
        model: str,
        training_file: str,
        validation_file: str,
        hyperparameters: dict[str, Any],
        suffix: str,
        seed: int | None,
        metadata: dict[str, str],
        runner: str,
    ) -> JobView:
        """Checks everything, then records and queues the job."""
        if not model:
            raise InvalidArgument("model is required", param="model")
        if not training_file:
            raise InvalidArgument("training_file is required", param="training_file")
        check_suffix(suffix)
        if len(metadata) > 16:
            raise InvalidArgument("metadata has more than 16 keys", param="metadata")
        base = self.inference.base_model(project, model)
        context = base.max_model_len or self.settings.max_seq_length
        hp = resolve_hyperparameters(hyperparameters, self.defaults, context_length=context)
        counter = self._counter(base.path)
        train = parse_training_file(
            self._read(project, training_file, "training_file"),
            param="training_file",
            count_tokens=counter,
            max_tokens=hp.max_seq_length,
            min_examples=self.settings.min_examples,
        )
        validation = None
        if validation_file:
            validation = parse_training_file(
                self._read(project, validation_file, "validation_file"),
                param="validation_file",
                count_tokens=counter,
                max_tokens=hp.max_seq_length,
                min_examples=1,
                expected_format=train.format,
            )
        job = self.jobs.create(
            project=project,
            model=model,
            base_model_path=base.path,
            training_file=training_file,
            validation_file=validation_file or None,
            suffix=suffix,
            seed=seed if seed is not None else secrets.randbelow(2**31),
            hyperparameters=hp,
            metadata=metadata,
            runner=runner,
        )
        store_bytes(self.blobs, f"{job.id}-train", _jsonl(train.examples))
        if validation is not None:
            store_bytes(self.blobs, f"{job.id}-validation", _jsonl(validation.examples))
        described = f"{len(train.examples)} training examples, {train.total_tokens} tokens"
        if validation is not None:
            described += f"; {len(validation.examples)} validation examples"
        self.jobs.mark_queued(job.id, f"Files validated ({described}); moving job to queued")
        return self.jobs.get(None, job.id)
