"""Creating a job: every check happens here, before a job is queued (OpenAI's order).

At `create`, the request itself is checked: an unknown base model, out-of-range
hyperparameters, a bad suffix or metadata, and files that are missing or not fine-tuning files
are INVALID_ARGUMENT (HTTP 400) and store nothing. The job is then recorded in
`validating_files` and returned at once; its files are read and checked in the background
(`validate`): invalid lines (with line numbers), wrong roles, examples without an assistant
turn, too few examples, examples over the token limit and a validation file in another format
than the training file fail the job with OpenAI's error object (`code`, `message`, `param`).
Valid examples are stored as chat JSONL in the blob store and the job moves to `queued`. A job
a stopped service left in `validating_files` is validated again at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import orjson

from loomstack_kit.blobstore import BlobStore
from loomstack_kit.errors import InvalidArgument, LoomstackError, NotFound, Unavailable

from .artifacts import store_bytes
from .inference import InferenceClient
from .jobs import VALIDATING, Jobs, JobView
from .settings import TrainingSettings
from .validation import (
    ChatTokenCounter,
    Defaults,
    Messages,
    check_suffix,
    parse_training_file,
    resolve_hyperparameters,
)

log = logging.getLogger(__name__)

FINE_TUNE_PURPOSE = "fine-tune"
# An unreachable inference service is retried this often (with a pause) before the job fails.
READ_ATTEMPTS = 5
RETRY_SECONDS = 3.0


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
        self._validations: dict[str, asyncio.Task[None]] = {}
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

    def _check_purpose(self, project: str, file_id: str, param: str) -> None:
        try:
            purpose = self.inference.file_purpose(project, file_id, param=param)
        except NotFound as exc:
            raise InvalidArgument(exc.message, code=f"invalid_{param}", param=param) from None
        if purpose != FINE_TUNE_PURPOSE:
            raise InvalidArgument(
                f"{param} {file_id} has purpose {purpose!r}; upload it with purpose 'fine-tune'",
                code=f"invalid_{param}",
                param=param,
            )

    def _read(self, project: str, file_id: str, param: str) -> bytes:
        self._check_purpose(project, file_id, param)
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
        """Checks the request, then records the job in `validating_files` (see `validate`)."""
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
        self._check_purpose(project, training_file, "training_file")
        if validation_file:
            self._check_purpose(project, validation_file, "validation_file")
        return self.jobs.create(
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

    def validate(self, job_id: str) -> None:
        """Blocking: reads and checks a `validating_files` job's files, stores the examples
        and queues the job, or fails it with the first problem (line numbers included)."""
        job = self.jobs.get(None, job_id)
        if job.status != VALIDATING:
            return
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                described = self._validate_files(job)
            except InvalidArgument as exc:
                self.jobs.fail(job.id, exc.code, exc.message, exc.param or "")
                return
            except Unavailable as exc:
                if attempt == READ_ATTEMPTS:
                    self.jobs.fail(job.id, "files_unavailable", f"reading the files failed: {exc}")
                    return
                time.sleep(RETRY_SECONDS)
                continue
            except LoomstackError as exc:
                self.jobs.fail(job.id, exc.code, exc.message, exc.param or "")
                return
            self.jobs.mark_queued(job.id, f"Files validated ({described}); moving job to queued")
            return

    def _validate_files(self, job: JobView) -> str:
        hp = job.hyperparameters
        counter = self._counter(job.base_model_path)
        train = parse_training_file(
            self._read(job.project, job.training_file, "training_file"),
            param="training_file",
            count_tokens=counter,
            max_tokens=hp.max_seq_length,
            min_examples=self.settings.min_examples,
        )
        validation = None
        if job.validation_file:
            validation = parse_training_file(
                self._read(job.project, job.validation_file, "validation_file"),
                param="validation_file",
                count_tokens=counter,
                max_tokens=hp.max_seq_length,
                min_examples=1,
                expected_format=train.format,
            )
        store_bytes(self.blobs, f"{job.id}-train", _jsonl(train.examples))
        if validation is not None:
            store_bytes(self.blobs, f"{job.id}-validation", _jsonl(validation.examples))
        described = f"{len(train.examples)} training examples, {train.total_tokens} tokens"
        if validation is not None:
            described += f"; {len(validation.examples)} validation examples"
        return described

    # --- in the background ----------------------------------------------------------------

    def start_validation(self, job_id: str) -> None:
        """Validates the job's files in a worker thread (call on the event loop)."""
        if job_id in self._validations:
            return
        task = asyncio.create_task(self._validate_logged(job_id))
        self._validations[job_id] = task
        task.add_done_callback(lambda _t: self._validations.pop(job_id, None))

    async def _validate_logged(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self.validate, job_id)
        except Exception as exc:  # never leave a job in validating_files for good
            log.exception("validating a job's files failed", extra={"job_id": job_id})
            await asyncio.to_thread(
                self.jobs.fail, job_id, "validation_error", f"validating the files failed: {exc}"
            )

    def resume(self) -> list[str]:
        """Starts validating the jobs a previous process left in `validating_files`."""
        pending = [job.id for job in self.jobs.validating()]
        for job_id in pending:
            self.start_validation(job_id)
        return pending

    async def stop(self) -> None:
        """Waits for the running validations (each is short: a file read and a parse)."""
        if self._validations:
            await asyncio.gather(*self._validations.values(), return_exceptions=True)
