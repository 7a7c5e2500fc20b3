"""`loomstack batch …`: submit, follow, inspect, cancel and fetch the results of batches."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from openai.types import Batch
from rich import box
from rich.console import Console
from rich.table import Column, Table

from . import batch_progress
from .gateway_client import CliError, client

ENDPOINT: Final = "/v1/chat/completions"
EXIT_BATCH_UNSUCCESSFUL = 1

batch_app = typer.Typer(help="Submit and follow OpenAI-style batches.", no_args_is_help=True)
console = Console()
progress_console = Console(stderr=True)


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--metadata")
        metadata[key] = value
    return metadata


def check_model(path: Path, model: str) -> int:
    """Every line's `body.model` is `model`; returns the number of requests. Bad JSON is left to
    the service, which reports it with its line."""
    requests = 0
    with path.open("rb") as lines:
        for line_no, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            requests += 1
            try:
                named = json.loads(raw).get("body", {}).get("model")
            except (ValueError, AttributeError):
                continue
            if named != model:
                raise CliError(
                    f"line {line_no} names model {named!r}, not {model!r} "
                    f"(param: body.model, line: {line_no})"
                )
    return requests


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _progress(batch: Batch) -> str:
    counts = batch.request_counts
    if counts is None:
        return "-"
    failed = f" ({counts.failed} failed)" if counts.failed else ""
    return f"{counts.completed + counts.failed}/{counts.total}{failed}"


@batch_app.command()
def submit(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="JSONL batch input file.")
    ],
    model: Annotated[
        str | None, typer.Option(help="Check that every line asks for this model.")
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="key=value, repeatable.")
    ] = None,
    priority: Annotated[
        int | None, typer.Option(min=-1, max=1, help="-1 low, 0 normal, 1 high.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the batch to its end.")] = False,
    download: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="With --wait: write the output/error files here."),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 0.5,
) -> None:
    """Upload FILE and create a batch from it; print the batch id."""
    pairs = _metadata(metadata or [])
    if model is not None:
        check_model(file, model)
    api = client()
    with progress_console.status(f"uploading {file.name}"), file.open("rb") as content:
        uploaded = api.files.create(file=(file.name, content), purpose="batch")
    extra: dict[str, Any] = {"priority": priority} if priority is not None else {}
    batch = api.batches.create(
        input_file_id=uploaded.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata=pairs or None,
        extra_body=extra or None,
    )
    console.print(batch.id, highlight=False)
    if not wait:
        return
    try:
        outcome = batch_progress.follow(api, batch, progress_console, interval)
    except KeyboardInterrupt:
        progress_console.print(
            f"stopped waiting; {batch.id} goes on (`loomstack batch get {batch.id}`)"
        )
        raise typer.Exit(130) from None
    batch_progress.summary(api, outcome, console)
    if download is not None:
        for path in batch_progress.download(api, outcome.batch, download):
            console.print(f"wrote {path}")
    if outcome.batch.status != "completed":
        raise typer.Exit(EXIT_BATCH_UNSUCCESSFUL)


@batch_app.command()
def get(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch object.")] = False,
) -> None:
    """Show one batch."""
    batch = client().batches.retrieve(batch_id)
    if as_json:
        console.print_json(batch.model_dump_json())
        return
    table = Table(show_header=False, title=batch.id, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    usage = batch.usage
    rows = [
        ("status", batch.status),
        ("model", batch.model or "-"),
        ("requests", _progress(batch)),
        ("tokens in/out", f"{usage.input_tokens:,} / {usage.output_tokens:,}" if usage else "-"),
        ("priority", str((batch.model_extra or {}).get("priority", 0))),
        ("queue position", str((batch.model_extra or {}).get("queue_position", 0))),
        ("created", _when(batch.created_at)),
        ("estimated finish", _when((batch.model_extra or {}).get("estimated_finish_at"))),
        ("input file", batch.input_file_id),
        ("output file", batch.output_file_id or "-"),
        ("error file", batch.error_file_id or "-"),
        ("metadata", json.dumps(batch.metadata) if batch.metadata else "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if batch.errors and batch.errors.data:
        for err in batch.errors.data:
            where = f"line {err.line}: " if err.line else ""
            console.print(f"[red]{err.code}[/red] {where}{err.message}")


@batch_app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list object.")] = False,
) -> None:
    """List batches, newest first."""
    page = client().batches.list(limit=limit)
    if as_json:
        console.print_json(page.model_dump_json())
        return
    table = Table(
        Column("id", no_wrap=True, min_width=38),
        Column("status", no_wrap=True, min_width=11),
        Column("model", overflow="fold"),
        Column("requests", no_wrap=True, min_width=8),
        Column("created", no_wrap=True, min_width=11),
        box=box.SIMPLE,
        pad_edge=False,
    )
    for batch in page.data:
        created = time.strftime("%m-%d %H:%M", time.localtime(batch.created_at))
        table.add_row(batch.id, batch.status, batch.model or "-", _progress(batch), created)
    console.print(table)


@batch_app.command()
def cancel(batch_id: Annotated[str, typer.Argument(help="The batch id.")]) -> None:
    """Cancel a batch (finished lines stay in its output file)."""
    batch = client().batches.cancel(batch_id)
    console.print(f"{batch.id}: {batch.status}", highlight=False)


@batch_app.command()
def results(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    errors: Annotated[bool, typer.Option("--errors", help="The error file instead.")] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", dir_okay=False, help="Write here.")
    ] = None,
) -> None:
    """Print (or save) a batch's output file, or its error file with --errors."""
    api = client()
    batch = api.batches.retrieve(batch_id)
    file_id = batch.error_file_id if errors else batch.output_file_id
    if not file_id:
        kind = "error" if errors else "output"
        raise CliError(f"batch {batch_id} has no {kind} file (status: {batch.status})")
    if output is not None:
        batch_progress.save_file(api, file_id, output)
        progress_console.print(f"wrote {output}")
        return
    with api.files.with_streaming_response.content(file_id) as resp:
        for chunk in resp.iter_bytes():
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
