"""The prompt file of a comparison: OpenAI chat JSONL, as the eval gate reads it.

Each line is `{"messages": [{"role", "content"}, ...]}`. When the last turn is the assistant's,
it is the reference answer and the turns before it are the prompt (a curated fine-tuning
example); otherwise the whole conversation is the prompt and the item has no reference: it is
voted on but not scored. Every problem names its line, and nothing is stored while any remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from loomstack_kit.errors import InvalidArgument

from .batch_answers import Messages, split_example
from .validation import chat_messages

MAX_REPORTED = 5
PARAM = "input_file_id"


@dataclass(frozen=True)
class ComparisonPrompt:
    """One prompt of the file: where it came from, the turns to answer, the reference."""

    line: int
    messages: Messages
    reference: str | None


def _prompt_of(obj: Any, line: int) -> tuple[ComparisonPrompt | None, str | None]:
    """The line's prompt, or what is wrong with it."""
    if not isinstance(obj, dict) or "messages" not in obj:
        return None, "expected an object with `messages`"
    turns, problem = chat_messages(obj["messages"])
    if turns is None:
        return None, problem
    if turns[-1]["role"] != "assistant":
        return ComparisonPrompt(line, turns, None), None
    prompt, reference = split_example(turns)
    if not prompt:
        return None, "nothing before the assistant turn: a prompt needs a user turn to answer"
    return ComparisonPrompt(line, prompt, reference), None


def parse_comparison_file(content: bytes, *, max_items: int) -> list[ComparisonPrompt]:
    """Every prompt of the file, or InvalidArgument naming the first bad lines."""
    problems: list[tuple[int, str]] = []
    prompts: list[ComparisonPrompt] = []
    for line_no, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problems.append((line_no, f"not valid JSON ({exc})"))
        else:
            prompt, why = _prompt_of(obj, line_no)
            if prompt is None:
                problems.append((line_no, str(why)))
            else:
                prompts.append(prompt)
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        listed = "; ".join(f"line {n}: {why}" for n, why in problems)
        raise InvalidArgument(
            f"{PARAM} has invalid lines: {listed}",
            code="invalid_input_file",
            param=PARAM,
            line=problems[0][0],
        )
    if not prompts:
        raise InvalidArgument(f"{PARAM} has no prompts", code="invalid_input_file", param=PARAM)
    if len(prompts) > max_items:
        raise InvalidArgument(
            f"{PARAM} has {len(prompts)} prompts; a comparison takes at most {max_items}",
            code="invalid_input_file",
            param=PARAM,
        )
    return prompts
