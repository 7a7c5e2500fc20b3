"""The eval gate: base vs. fine-tuned model on the held-out validation examples.

Each validation example's last assistant turn is the reference (the human label); the turns
before it are the prompt. The adapter is registered as a candidate model
(`<fine-tuned name>:candidate`), both models answer every prompt as inference batches (greedy),
and both are scored by exact match and token overlap. The job is promoted, i.e. the adapter
registered under its final name, only when the fine-tuned token overlap beats the base's by
more than the configured margin. The result carries both scores either way.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from loomstack_kit.blobstore import BlobStore

from .artifacts import read_bytes
from .inference import InferenceClient
from .jobs import JobView
from .scoring import promoted, score


def split_example(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The prompt (every turn before the last assistant turn) and the reference answer."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def _answer(row: dict[str, Any] | None) -> str:
    try:
        return str((row or {})["response"]["body"]["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


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

    def _lines(self, model: str, prompts: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
        return [
            {
                "custom_id": f"eval-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": prompt,
                    "temperature": 0,
                    "max_tokens": self.max_tokens,
                },
            }
            for i, prompt in enumerate(prompts)
        ]

    def evaluate(self, job: JobView, adapter_dir: Path, name: str) -> dict[str, Any]:
        """Blocking: registers the candidate, runs both batches, scores them."""
        data = read_bytes(self.blobs, f"{job.id}-validation")
        examples = [orjson.loads(line)["messages"] for line in data.splitlines() if line.strip()]
        pairs = [split_example(m) for m in examples]
        prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
        candidate = f"{name}:candidate"
        self.inference.register_adapter(
            job.project, candidate, parent=job.model, source=str(adapter_dir)
        )
        results: dict[str, list[str]] = {}
        for key, model in (("base", job.model), ("fine_tuned", candidate)):
            rows = self.inference.run_batch(
                job.project, self._lines(model, prompts), timeout=self.timeout_seconds
            )
            results[key] = [_answer(rows.get(f"eval-{i}")) for i in range(len(prompts))]
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

    async def __call__(self, job: JobView, adapter_dir: Path, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.evaluate, job, adapter_dir, name)
