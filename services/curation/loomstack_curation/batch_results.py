"""A batch's result files as curation reads them: its input lines (prompts, each task's data in
`body.metadata`) joined with its output lines (read with the kit's batch-output reader) into the
lines worth importing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from loomstack_kit.batch_output import read_output


@dataclass(frozen=True)
class ResultLine:
    """One successful batch result: the request's prompt and data, and the model's answer."""

    custom_id: str
    prompt: str
    answer: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResults:
    """The importable lines of a batch and how many result lines were left out."""

    lines: list[ResultLine]
    skipped: int


def _prompt_of(body: dict[str, Any]) -> str:
    """The last user message's text (content parts joined)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def read_results(input_lines: Iterable[bytes], output_lines: Iterable[bytes]) -> BatchResults:
    """Joins a batch's input (prompts, task data in `body.metadata`) with its output lines.

    Only lines with a 200 response and no error are importable; every other output line counts
    as skipped.
    """
    requests: dict[str, dict[str, Any]] = {}
    for raw in input_lines:
        if raw.strip():
            line = orjson.loads(raw)
            requests[str(line.get("custom_id"))] = line.get("body") or {}
    lines: list[ResultLine] = []
    skipped = 0
    for out in read_output(output_lines):
        if not out.ok:
            skipped += 1
            continue
        request = requests.get(out.custom_id, {})
        metadata = request.get("metadata")
        lines.append(
            ResultLine(
                custom_id=out.custom_id,
                prompt=_prompt_of(request),
                answer=out.answer,
                data=dict(metadata) if isinstance(metadata, dict) else {},
            )
        )
    return BatchResults(lines, skipped)
