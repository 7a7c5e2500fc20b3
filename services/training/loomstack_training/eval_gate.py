"""The eval gate: base vs. fine-tuned model on the held-out validation examples.

Each validation example's last assistant turn is the reference (the human label); the turns
before it are the prompt. The adapter is registered as a candidate model
(`<fine-tuned name>:candidate`, deleted again once both have answered), both models answer
every prompt as inference batches (greedy), and both are scored by exact match and token
overlap. The job is promoted, i.e. the adapter
registered under its final name, only when the fine-tuned token overlap beats the base's by
more than the configured margin. The result carries both scores either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from opentelemetry import trace

from loomstack_kit.blobstore import BlobStore

from .artifacts import read_bytes
from .batch_answers import answer_prompts, split_example
from .inference import InferenceClient
from .jobs import JobView
from .scoring import promoted, score

tracer = trace.get_tracer("loomstack_training")


class EvalGate:
    """Runs the gate for a finished job (the promotion's `eval_gate` hook)."""

    def __init__(
        self,
        inference: InferenceClient,
        blobs: BlobStore,
        *,
        margin: float,
        max_tokens: int = 128,
        timeout_seconds: float = 3600.0,
    ) -> None:
        self.inference = inference
        self.blobs = blobs
        self.margin = margin
        self.max_tokens = max_tokens
        self.timeout_seconds = timeout_seconds

    def evaluate(self, job: JobView, source: str, name: str) -> dict[str, Any]:
        """Blocking: registers the candidate, runs both batches, scores them; one trace, whose
        calls to the inference service are its children."""
        with tracer.start_as_current_span(
            "training.eval_gate",
            attributes={"loomstack.job_id": job.id, "loomstack.project": job.project},
        ):
            return self._evaluate(job, source, name)

    def _evaluate(self, job: JobView, source: str, name: str) -> dict[str, Any]:
        data = read_bytes(self.blobs, f"{job.id}-validation")
        examples = [orjson.loads(line)["messages"] for line in data.splitlines() if line.strip()]
        pairs = [split_example(m) for m in examples]
        prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
        candidate = f"{name}:candidate"
        self.inference.register_adapter(job.project, candidate, parent=job.model, source=source)
        results: dict[str, list[str]] = {}
        try:
            for key, model in (("base", job.model), ("fine_tuned", candidate)):
                answers = answer_prompts(
                    self.inference,
                    job.project,
                    model,
                    prompts,
                    max_tokens=self.max_tokens,
                    timeout=self.timeout_seconds,
                    purpose="fine-tuning eval",
                )
                results[key] = [a.text for a in answers]
        finally:  # the candidate is not a model anyone should keep using
            self.inference.delete_model(job.project, candidate)
        base, tuned = score(results["base"], references), score(results["fine_tuned"], references)
        return {
            "examples": len(references),
            "base_exact_match": base.exact_match,
            "base_token_overlap": base.token_overlap,
            "fine_tuned_exact_match": tuned.exact_match,
            "fine_tuned_token_overlap": tuned.token_overlap,
            "required_margin": self.margin,
            "promoted": promoted(base, tuned, self.margin),
        }

    async def __call__(self, job: JobView, source: str, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.evaluate, job, source, name)
