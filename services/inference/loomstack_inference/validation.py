"""Validation of a batch input file, line by line, into rows of the requests table.

Every problem names its line (1-based) and field. Parsing goes on after a bad line so the
caller sees up to `MAX_REPORTED` problems at once; the caller stores nothing unless the
whole file is valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from loomstack_kit.errors import InvalidArgument

SUPPORTED_URLS = ("/v1/chat/completions",)
MAX_REPORTED = 50


@dataclass(frozen=True)
class LineProblem:
    """One bad line (OpenAI's batch `errors.data` entry)."""

    code: str
    line: int
    message: str
    param: str = ""


@dataclass(frozen=True)
class RequestLine:
    """One valid line, ready to store."""

    line_no: int
    custom_id: str
    body_json: str


@dataclass
class ValidationReport:
    """What a pass over the file found."""

    problems: list[LineProblem] = field(default_factory=list)
    model: str = ""
    lines: int = 0

    def add(self, problem: LineProblem) -> None:
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(problem)

    def error(self, total_problems: int) -> InvalidArgument:
        first = self.problems[0]
        more = total_problems - 1
        suffix = f" ({more} more problem{'s' if more != 1 else ''} in the file)" if more else ""
        where = f"line {first.line}: " if first.line else ""
        return InvalidArgument(
            f"invalid batch input file: {where}{first.message}{suffix}",
            code=first.code,
            param=first.param or None,
            line=first.line,
        )


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Splits a chunk stream into lines (without the newline), never holding the whole file."""
    tail = b""
    for chunk in chunks:
        data = tail + chunk
        parts = data.split(b"\n")
        tail = parts.pop()
        yield from parts
    if tail:
        yield tail


def parse_batch_input(
    chunks: Iterable[bytes],
    *,
    endpoint: str,
    known_models: set[str],
    max_lines: int,
    report: ValidationReport,
) -> Iterator[RequestLine]:
    """Yields valid lines and records problems in `report` (the caller checks it at the end)."""
    seen: dict[str, int] = {}
    total_problems = 0

    def problem(code: str, line: int, message: str, param: str = "") -> None:
        nonlocal total_problems
        total_problems += 1
        report.add(LineProblem(code, line, message, param))

    line_no = 0
    for raw in iter_lines(chunks):
        line_no += 1
        if not raw.strip():
            continue
        report.lines += 1
        if report.lines > max_lines:
            problem("too_many_lines", line_no, f"the file has more than {max_lines} requests")
            break
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem("invalid_utf8", line_no, f"not valid UTF-8 (byte {exc.start})")
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # orjson counts lines and columns within this one line: keep only the column.
            detail = str(exc).split(": line 1 column ")
            where = f" at column {detail[1].split(' ')[0]}" if len(detail) > 1 else ""
            problem("invalid_json", line_no, f"not valid JSON{where}: {detail[0]}")
            continue
        if not isinstance(obj, dict):
            problem(
                "invalid_line",
                line_no,
                f"each line must be a JSON object, got {type(obj).__name__}",
            )
            continue
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            problem(
                "missing_custom_id",
                line_no,
                "custom_id is missing or not a non-empty string",
                "custom_id",
            )
        elif "\x00" in custom_id:
            # Stored as text, which PostgreSQL refuses with NUL in it.
            problem(
                "invalid_custom_id",
                line_no,
                "custom_id must not contain NUL characters",
                "custom_id",
            )
        elif custom_id in seen:
            problem(
                "duplicate_custom_id",
                line_no,
                f"custom_id {custom_id!r} is used on line {seen[custom_id]} and line {line_no}",
                "custom_id",
            )
        else:
            seen[custom_id] = line_no
        method = obj.get("method")
        if method != "POST":
            problem("invalid_method", line_no, f'method must be "POST", got {method!r}', "method")
        url = obj.get("url")
        if url not in SUPPORTED_URLS:
            problem(
                "invalid_url",
                line_no,
                f"url {url!r} is not supported; use {', '.join(SUPPORTED_URLS)}",
                "url",
            )
        elif url != endpoint:
            problem(
                "mismatched_url",
                line_no,
                f"url {url!r} differs from the batch endpoint {endpoint!r}",
                "url",
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            problem("invalid_body", line_no, "body must be a JSON object", "body")
            continue
        model = body.get("model")
        if not isinstance(model, str) or not model:
            problem("missing_model", line_no, "body.model is missing", "body.model")
        elif model not in known_models:
            problem(
                "model_not_found",
                line_no,
                f"the model {model!r} does not exist or you do not have access to it; "
                f"available: {', '.join(sorted(known_models)) or 'none'}",
                "body.model",
            )
        elif not report.model:
            report.model = model
        elif model != report.model:
            problem(
                "mismatched_model",
                line_no,
                f"body.model {model!r} differs from {report.model!r} used by earlier lines; "
                "a batch runs one model",
                "body.model",
            )
        if body.get("stream"):
            problem(
                "invalid_stream", line_no, "body.stream must not be true in a batch", "body.stream"
            )
        if total_problems == 0 and isinstance(custom_id, str):
            yield RequestLine(line_no, custom_id, orjson.dumps(body).decode())
    if report.lines == 0 and total_problems == 0:
        problem("empty_file", 0, "the input file has no requests")
    if report.problems:
        raise report.error(total_problems)
