"""Runs comparisons: the checks when one is created, and the background loop that answers them.

Creating one checks both models (any registered model the project may use, base or adapter;
the same model twice is allowed, a sanity check of the setup), `max_tokens` and the input file
(purpose `fine-tune`, every line checked) before anything is stored. The loop then takes queued
comparisons one at a time, runs every prompt through model A and then model B as inference
batches (the eval gate's `answer_prompts`) and stores the answers and scores. At shutdown the
running batch is cancelled and the comparison re-queued; after a crash, `reconcile` at the
next start re-queues it (or fails it once it has been interrupted too often).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from loomstack_kit.errors import InvalidArgument

from .batch_answers import answer_prompts
from .comparison_file import parse_comparison_file
from .comparisons import Comparisons, ComparisonView
from .inference import InferenceClient
from .settings import TrainingSettings
from .submission import FINE_TUNE_PURPOSE

log = logging.getLogger(__name__)
MAX_TOKENS_LIMIT = 4096


class ComparisonRunner:
    """Creates comparisons and runs them in the background."""

    def __init__(
        self, settings: TrainingSettings, comparisons: Comparisons, inference: InferenceClient
    ) -> None:
        self.settings = settings
        self.comparisons = comparisons
        self.inference = inference
        self._stop = threading.Event()

    # --- creation -----------------------------------------------------------------------

    def create(
        self,
        project: str,
        *,
        model_a: str,
        model_b: str,
        input_file_id: str,
        max_tokens: int | None,
        metadata: dict[str, str],
    ) -> ComparisonView:
        """Blocking: checks everything, then stores the prompts and queues the comparison."""
        for param, value in (
            ("model_a", model_a),
            ("model_b", model_b),
            ("input_file_id", input_file_id),
        ):
            if not value:
                raise InvalidArgument(f"{param} is required", param=param)
        if len(metadata) > 16:
            raise InvalidArgument("metadata has more than 16 keys", param="metadata")
        if max_tokens is None:
            max_tokens = self.settings.comparison_max_tokens
        elif not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidArgument(
                f"max_tokens is {max_tokens}: it must be in [1, {MAX_TOKENS_LIMIT}]",
                param="max_tokens",
            )
        for param, name in (("model_a", model_a), ("model_b", model_b)):
            model = self.inference.model(project, name, param=param)
            if model.max_model_len and max_tokens >= model.max_model_len:
                raise InvalidArgument(
                    f"max_tokens is {max_tokens}: {name!r} has a context of "
                    f"{model.max_model_len} tokens",
                    param="max_tokens",
                )
        purpose = self.inference.file_purpose(project, input_file_id, param="input_file_id")
        if purpose != FINE_TUNE_PURPOSE:
            raise InvalidArgument(
                f"input_file_id {input_file_id} has purpose {purpose!r}; upload it with "
                "purpose 'fine-tune'",
                code="invalid_input_file",
                param="input_file_id",
            )
        content = self.inference.read_file(
            project,
            input_file_id,
            param="input_file_id",
            max_bytes=self.settings.max_file_bytes,
        )
        prompts = parse_comparison_file(content, max_items=self.settings.comparison_max_items)
        return self.comparisons.create(
            project=project,
            model_a=model_a,
            model_b=model_b,
            input_file_id=input_file_id,
            max_tokens=max_tokens,
            metadata=metadata,
            prompts=prompts,
        )

    # --- the background loop ------------------------------------------------------------

    def reconcile(self) -> tuple[list[str], list[str]]:
        """What a crashed earlier process left running: re-queued, or failed (ids of both)."""
        return self.comparisons.reconcile(self.settings.comparison_max_attempts)

    def answer(self, comparison: ComparisonView) -> None:
        """Blocking: both models answer every prompt; the comparison completes or fails."""
        prompts = self.comparisons.prompts(comparison.id)
        answers = []
        for key, model in (("a", comparison.model_a), ("b", comparison.model_b)):
            try:
                answers.append(
                    answer_prompts(
                        self.inference,
                        comparison.project,
                        model,
                        prompts,
                        max_tokens=comparison.max_tokens,
                        timeout=self.settings.comparison_timeout_seconds,
                        purpose=f"comparison {comparison.id} model {key}",
                        stop=self._stop,
                    )
                )
            except Exception as exc:
                if self._stop.is_set():
                    self.comparisons.requeue(comparison.id, interrupted=False)
                    log.info("comparison re-queued at shutdown", extra={"id": comparison.id})
                    return
                log.warning("comparison failed", extra={"id": comparison.id, "error": str(exc)})
                self.comparisons.fail(
                    comparison.id, "comparison_failed", f"model_{key} {model!r}: {exc}"
                )
                return
        try:
            self.comparisons.complete(comparison.id, answers[0], answers[1])
        except Exception as exc:
            log.exception("comparison results not stored", extra={"id": comparison.id})
            self.comparisons.fail(comparison.id, "comparison_failed", f"results not stored: {exc}")

    async def run(self) -> None:
        """Runs queued comparisons, one at a time, until `stop`."""
        while not self._stop.is_set():
            try:
                comparison = await asyncio.to_thread(self.comparisons.claim_next)
                if comparison is not None:
                    await asyncio.to_thread(self.answer, comparison)
                    continue
            except Exception:  # a database hiccup must not end the loop
                log.exception("comparison runner error")
            await asyncio.sleep(self.settings.poll_seconds)

    def stop(self) -> None:
        """Ends `run`: the running batch is cancelled and its comparison re-queued."""
        self._stop.set()
