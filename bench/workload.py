"""The benchmark workload: N varied chat requests, the same on every run.

Both benchmarks use these requests, so their numbers compare the serving stack and nothing else:
``bench/raw_engine.py`` feeds the ``messages`` straight into vLLM's ``LLM.chat``, the full-stack
benchmark submits the lines as an OpenAI batch input file. Every request asks for exactly
``max_tokens`` output tokens (``ignore_eos``) at temperature 0.

Run as a script to write the requests as a batch input file (JSONL)::

    python bench/workload.py --requests 1000 --max-tokens 64 --model NAME --out input.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

SUBJECTS = (
    "the water cycle",
    "photosynthesis",
    "the French Revolution",
    "black holes",
    "how vaccines work",
    "the history of the bicycle",
    "plate tectonics",
    "the Roman Empire",
    "machine learning",
    "coral reefs",
    "the printing press",
    "volcanoes",
    "the human heart",
    "renewable energy",
    "the Moon landing",
    "honey bees",
    "the stock market",
    "climate change",
    "the Silk Road",
    "electric cars",
    "the immune system",
    "ancient Egypt",
    "quantum computers",
    "rainforests",
    "the Internet",
)

TASKS = (
    "Explain {subject} to a ten-year-old.",
    "Write three short facts about {subject}.",
    "Give a one-paragraph summary of {subject}.",
    "What are the most common misconceptions about {subject}?",
    "Write a short poem about {subject}.",
    "List the key terms someone should know about {subject}, with a definition for each.",
    "Why does {subject} matter today? Answer in a few sentences.",
    "Describe {subject} as if you were a tour guide.",
)

SYSTEM_PROMPTS = (
    None,
    "You are a concise assistant. Answer clearly.",
    None,
    "You are a friendly teacher who explains things step by step.",
)

# Seven styles (7 is coprime with the 200 subject × task pairs): the first 1,400 conversations
# are all distinct, so no request is an exact repeat that prefix caching would make free.
STYLES = (
    "",
    " Keep it simple.",
    " Use plain language.",
    " Be precise.",
    " Include a number or a date if you can.",
    " Avoid jargon.",
    " Start with the most important point.",
)

FOLLOW_UPS = (
    "Can you make that shorter?",
    "Now add one example.",
    "Please say more about the most important part.",
)


def _messages(index: int) -> list[dict[str, str]]:
    """Return the conversation of request ``index``: deterministic, varied in length and shape."""
    subject = SUBJECTS[index % len(SUBJECTS)]
    task = TASKS[(index // len(SUBJECTS)) % len(TASKS)]
    system = SYSTEM_PROMPTS[index % len(SYSTEM_PROMPTS)]
    question = task.format(subject=subject) + STYLES[index % len(STYLES)]

    messages: list[dict[str, str]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    if index % 5 == 4:
        # Every fifth request is a second turn, so prompts differ in length and structure.
        messages.append({"role": "user", "content": question})
        messages.append(
            {"role": "assistant", "content": f"Here is a short answer about {subject}."}
        )
        question = FOLLOW_UPS[index % len(FOLLOW_UPS)]
    messages.append({"role": "user", "content": question})
    return messages


def make_chat_requests(
    n: int, max_tokens: int, model: str = DEFAULT_MODEL_NAME
) -> list[dict[str, Any]]:
    """Return ``n`` OpenAI batch-input lines for ``/v1/chat/completions``.

    Each line is ``{"custom_id", "method", "url", "body"}``; the body names ``model`` and asks for
    exactly ``max_tokens`` tokens (``ignore_eos``) with greedy sampling. The result depends only on
    the arguments.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return [
        {
            "custom_id": f"request-{index:06d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": _messages(index),
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0,
            },
        }
        for index in range(n)
    ]


def write_jsonl(requests: list[dict[str, Any]], path: Path) -> None:
    """Write ``requests`` to ``path`` as a batch input file, one JSON object per line."""
    with path.open("w", encoding="utf-8") as out:
        for request in requests:
            out.write(json.dumps(request, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Write the workload as an OpenAI batch input file."""
    parser = argparse.ArgumentParser(description="Write the benchmark requests as batch JSONL.")
    parser.add_argument("--requests", type=int, default=1000, help="number of requests")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model name in each body")
    parser.add_argument("--out", type=Path, required=True, help="output JSONL file")
    args = parser.parse_args(argv)
    write_jsonl(make_chat_requests(args.requests, args.max_tokens, args.model), args.out)
    print(f"wrote {args.requests} requests to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
