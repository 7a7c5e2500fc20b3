"""Following a fine-tuning job to its end: a step bar with the latest loss while it trains, the
job's messages as they arrive, then the eval gate's verdict.

Polls `fine_tuning.jobs.retrieve` and the newest page of `list_events` (newest first, so one
page per poll sees everything new unless more than a page arrived in between).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import openai
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
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

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
EVENT_PAGE = 100


@dataclass(frozen=True)
class JobOutcome:
    """The terminal job, its step metrics (oldest first) and the wall time spent waiting."""

    job: FineTuningJob
    metrics: list[dict[str, Any]]
    wall_seconds: float


def extra(job: FineTuningJob, key: str) -> Any:
    """A Loomstack field of the job object (`eval`, `trained_steps`, `total_steps`, ...)."""
    return (job.model_extra or {}).get(key)


def follow(
    client: openai.OpenAI,
    job: FineTuningJob,
    console: Console,
    interval: float = 1.0,
    timeout: float | None = None,
) -> JobOutcome:
    """Polls until the job is terminal (or `timeout` s passed: TimeoutError), printing each
    message event and keeping a step bar with the latest training loss."""
    start = time.monotonic()
    seen: set[str] = set()
    metrics: list[dict[str, Any]] = []
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(job.status, total=None, loss="-")
        while True:
            events = client.fine_tuning.jobs.list_events(job.id, limit=EVENT_PAGE).data
            for event in reversed(events):
                if event.id in seen:
                    continue
                seen.add(event.id)
                _show(event, progress, metrics)
            total = extra(job, "total_steps") or None
            loss = f"{metrics[-1]['train_loss']:.4f}" if metrics else "-"
            progress.update(
                bar,
                description=job.status,
                completed=extra(job, "trained_steps") or 0,
                total=total,
                loss=loss,
            )
            if job.status in TERMINAL:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"{job.id} is still {job.status} after {timeout:.0f} s")
            time.sleep(interval)
            job = client.fine_tuning.jobs.retrieve(job.id)
    return JobOutcome(job, metrics, time.monotonic() - start)


def _show(event: FineTuningJobEvent, progress: Progress, metrics: list[dict[str, Any]]) -> None:
    if event.type == "metrics":
        # Step events move the bar; every tenth (and the first) is also printed.
        data: dict[str, Any] = dict(event.data) if isinstance(event.data, dict) else {}
        metrics.append(data)
        if data.get("step") == 1 or int(data.get("step", 0)) % 10 == 0:
            progress.console.print(f"  {event.message}", highlight=False)
        return
    style = {"warn": "yellow", "error": "red"}.get(event.level, "")
    line = f"  {event.message}"
    progress.console.print(f"[{style}]{line}[/{style}]" if style else line, highlight=False)


def eval_table(job: FineTuningJob) -> Table | None:
    """The eval gate's scores (base vs fine-tuned) and verdict, if the job ran the gate."""
    gate = extra(job, "eval")
    if not gate:
        return None
    verdict = "promoted" if gate.get("promoted") else "not promoted"
    table = Table(
        "model",
        "exact match",
        "token overlap",
        title=f"eval gate on {gate['examples']} held-out examples: {verdict} "
        f"(needs a token overlap gain over {gate['required_margin']:.3f})",
        title_justify="left",
    )
    for label, key in (("base", "base"), ("fine-tuned", "fine_tuned")):
        scores = gate[key]
        table.add_row(label, f"{scores['exact_match']:.3f}", f"{scores['token_overlap']:.3f}")
    return table


def summary(outcome: JobOutcome, console: Console) -> None:
    """Status, model, steps, tokens, wall time, first/last loss and the eval gate."""
    job = outcome.job
    console.print(f"[bold]{job.id}[/bold]: {job.status}", highlight=False)
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("fine-tuned model", job.fine_tuned_model or "-")
    table.add_row("steps", f"{extra(job, 'trained_steps') or 0}/{extra(job, 'total_steps') or 0}")
    table.add_row("trained tokens", f"{job.trained_tokens or 0:,}")
    if outcome.metrics:
        first, last = outcome.metrics[0], outcome.metrics[-1]
        table.add_row("loss", f"{first['train_loss']:.4f} → {last['train_loss']:.4f}")
    table.add_row("wall time", f"{outcome.wall_seconds:,.1f} s")
    console.print(table)
    if job.error is not None and job.error.message:
        console.print(f"[red]{job.error.code}[/red] {job.error.message}", highlight=False)
    gate = eval_table(job)
    if gate is not None:
        console.print(gate)
