"""Following a batch to its end: a progress bar while it runs, then a summary of what it produced.

Polls `batches.retrieve` (the gateway's hot path) every `interval` seconds; the throughput shown
is over the last few seconds, the summary's over the whole wall time.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from openai.types import Batch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RATE_WINDOW_SECONDS = 5.0
SAMPLES = 3
SAMPLE_CHARS = 100


@dataclass(frozen=True)
class Outcome:
    """The terminal batch and the wall time spent waiting for it."""

    batch: Batch
    wall_seconds: float


def _extra(batch: Batch, key: str) -> object:
    return (batch.model_extra or {}).get(key)


def _describe(batch: Batch) -> str:
    status: str = batch.status
    position = _extra(batch, "queue_position")
    if status == "in_progress" and not (batch.request_counts and batch.request_counts.completed):
        start = _extra(batch, "estimated_start_at")
        if isinstance(position, int) and position > 0:
            status += f" · {position} ahead"
        if isinstance(start, int) and start > time.time():
            status += " · starts ~" + time.strftime("%H:%M:%S", time.localtime(start))
    return status


def follow(client: openai.OpenAI, batch: Batch, console: Console, interval: float = 0.5) -> Outcome:
    """Polls until the batch is terminal, showing progress; returns the final batch."""
    start = time.monotonic()
    window: deque[tuple[float, int]] = deque()
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]:,} output tokens"),
        TextColumn("{task.fields[rate]:,.0f} output tok/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(_describe(batch), total=None, tokens=0, rate=0.0)
        while True:
            counts, usage = batch.request_counts, batch.usage
            done = (counts.completed + counts.failed) if counts else 0
            output_tokens = usage.output_tokens if usage else 0
            now = time.monotonic()
            window.append((now, output_tokens))
            while window and now - window[0][0] > RATE_WINDOW_SECONDS:
                window.popleft()
            elapsed = now - window[0][0]
            rate = (output_tokens - window[0][1]) / elapsed if elapsed > 0 else 0.0
            progress.update(
                task,
                description=_describe(batch),
                completed=done,
                total=(counts.total or None) if counts else None,
                tokens=output_tokens,
                rate=rate,
            )
            if batch.status in TERMINAL:
                break
            time.sleep(interval)
            batch = client.batches.retrieve(batch.id)
    return Outcome(batch, time.monotonic() - start)


def summary(client: openai.OpenAI, outcome: Outcome, console: Console) -> None:
    """Requests, tokens, wall time and throughput, sample answers, and where the files are."""
    batch = outcome.batch
    counts, usage = batch.request_counts, batch.usage
    output_tokens = usage.output_tokens if usage else 0
    console.print(f"[bold]{batch.id}[/bold]: {batch.status}", highlight=False)
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("requests ok", f"{counts.completed if counts else 0:,}")
    table.add_row("requests failed", f"{counts.failed if counts else 0:,}")
    table.add_row("input tokens", f"{usage.input_tokens if usage else 0:,}")
    table.add_row("output tokens", f"{output_tokens:,}")
    table.add_row("wall time", f"{outcome.wall_seconds:,.1f} s")
    rate = output_tokens / outcome.wall_seconds if outcome.wall_seconds > 0 else 0.0
    table.add_row("output tokens/s", f"{rate:,.1f}")
    console.print(table)

    if batch.errors and batch.errors.data:
        for err in batch.errors.data:
            where = f"line {err.line}: " if err.line else ""
            console.print(f"[red]{err.code}[/red] {where}{err.message}")

    if batch.output_file_id:
        samples = Table("custom_id", "answer", title="sample answers", title_justify="left")
        for custom_id, answer in sample_answers(client, batch.output_file_id):
            samples.add_row(custom_id, answer)
        if samples.row_count:
            console.print(samples)
    console.print(f"output file: {batch.output_file_id or '-'}")
    console.print(f"error file:  {batch.error_file_id or '-'}")


def sample_answers(client: openai.OpenAI, file_id: str) -> Iterator[tuple[str, str]]:
    """(custom_id, first characters of the answer) of the output file's first lines."""
    with client.files.with_streaming_response.content(file_id) as resp:
        for n, line in enumerate(resp.iter_lines()):
            if n >= SAMPLES:
                return
            if not line.strip():
                continue
            doc = json.loads(line)
            yield str(doc.get("custom_id")), _answer(doc)[:SAMPLE_CHARS]


def _answer(doc: dict[str, object]) -> str:
    try:
        body: Any = doc["response"]
        content = body["body"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return json.dumps(doc.get("error") or doc.get("response"))
    return " ".join(str(content).split())


def download(client: openai.OpenAI, batch: Batch, directory: Path) -> list[Path]:
    """Writes the batch's output and error files into `directory`; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_id, suffix in ((batch.output_file_id, "output"), (batch.error_file_id, "errors")):
        if file_id:
            path = directory / f"{batch.id}_{suffix}.jsonl"
            save_file(client, file_id, path)
            written.append(path)
    return written


def save_file(client: openai.OpenAI, file_id: str, path: Path) -> None:
    """Streams a file's content to `path`."""
    with client.files.with_streaming_response.content(file_id) as resp, path.open("wb") as out:
        for chunk in resp.iter_bytes():
            out.write(chunk)
