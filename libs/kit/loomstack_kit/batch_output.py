"""The one reader of a batch's output and error lines (OpenAI's batch output format), for every
service that reads batch results: curation's import and training's eval gate and comparisons.

A line is `{"custom_id", "response": {"status_code", "body"}, "error"}`. It has an answer when it
has no error, its status is 200 and its body has a chat completion choice; otherwise `error`
says why not (the line's own error message or code first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

NO_COMPLETION = "the result line has no chat completion"


@dataclass(frozen=True)
class OutputLine:
    """One result line: its answer (the first choice's message content), or why it has none."""

    custom_id: str
    answer: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_output_line(raw: bytes | str) -> OutputLine:
    """One output or error line (orjson.JSONDecodeError when it is not JSON)."""
    row: Any = orjson.loads(raw)
    if not isinstance(row, dict):
        return OutputLine("None", "", "the result line is not a JSON object")
    custom_id = str(row.get("custom_id"))
    error = row.get("error")
    if error:
        if isinstance(error, dict):
            return OutputLine(
                custom_id, "", str(error.get("message") or error.get("code") or error)
            )
        return OutputLine(custom_id, "", str(error))
    response = row.get("response") or {}
    status = response.get("status_code") if isinstance(response, dict) else None
    if status != 200:
        return OutputLine(custom_id, "", f"the request ended with status {status}")
    body = response.get("body") or {}
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return OutputLine(custom_id, "", NO_COMPLETION)
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    return OutputLine(custom_id, str(content or ""))


def read_output(lines: Iterable[bytes]) -> Iterator[OutputLine]:
    """The result lines of a JSONL stream (blank lines skipped), one at a time."""
    for raw in lines:
        if raw.strip():
            yield parse_output_line(raw)
