"""A model's answers to a list of chat prompts, run as one inference batch.

The eval gate (base vs. fine-tuned after a job) and on-demand comparisons (any two models) both
ask a model to answer held-out prompts the same way: greedy decoding, one batch line per prompt
(a batch names one model), the answers read back in prompt order. A prompt whose request failed
gets its error instead of an answer; a batch in which every request failed is an error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from loomstack_kit.batch_output import OutputLine
from loomstack_kit.errors import Unavailable

from .inference import InferenceClient

Messages = list[dict[str, str]]


def split_example(messages: Messages) -> tuple[Messages, str]:
    """The prompt (every turn before the last assistant turn) and the reference answer."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@dataclass(frozen=True)
class Answer:
    """One prompt's answer, or why its request failed."""

    text: str
    error: str = ""


def _answer(row: OutputLine | None) -> Answer:
    if row is None:
        return Answer("", "no result line for this prompt")
    return Answer(row.answer, row.error or "")


def answer_prompts(
    inference: InferenceClient,
    project: str,
    model: str,
    prompts: list[Messages],
    *,
    max_tokens: int,
    timeout: float,
    purpose: str,
    stop: threading.Event | None = None,
) -> list[Answer]:
    """Blocking: runs the prompts through `model` as one batch (tagged `purpose` in its
    metadata) and returns the answers in prompt order."""
    lines = [
        {
            "custom_id": f"prompt-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": prompt,
                "temperature": 0,
                "max_tokens": max_tokens,
            },
        }
        for i, prompt in enumerate(prompts)
    ]
    rows = inference.run_batch(project, lines, timeout=timeout, purpose=purpose, stop=stop)
    answers = [_answer(rows.get(f"prompt-{i}")) for i in range(len(prompts))]
    if answers and all(a.error for a in answers):
        raise Unavailable(f"every request to {model!r} failed, e.g.: {answers[0].error}")
    return answers
