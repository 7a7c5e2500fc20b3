"""`loomstack curation …`: task schemas, curation tasks, gold stars, statistics, imports and
dataset snapshots, over the gateway's `/v1/curation` routes."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from .gateway_client import CliError, call, error_message, send

curation_app = typer.Typer(
    help="Curation: schemas, Label Studio tasks, gold stars, dataset snapshots.",
    no_args_is_help=True,
)
snapshot_app = typer.Typer(help="Immutable, versioned training data sets.", no_args_is_help=True)
curation_app.add_typer(snapshot_app, name="snapshot")
console = Console()
JsonOption = Annotated[bool, typer.Option("--json", help="Print the JSON response.")]


def request(method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One call to `/v1/curation<path>`; an error response becomes a CliError with the
    service's message."""
    return call(method, f"/curation{path}", **kwargs)


def get_import(batch_id: str) -> dict[str, Any] | None:
    """A batch's import, or None while there is none (the batch has not completed, or the
    curation service has not seen its event yet)."""
    response = send("GET", f"/curation/imports/{batch_id}")
    if response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise CliError(error_message(response))
    body: dict[str, Any] = response.json()
    return body


def follow_import(
    batch_id: str, out: Console, timeout: float = 600.0, interval: float = 1.0
) -> dict[str, Any]:
    """Waits until a batch's import into Label Studio completed; its import object. A failed
    import, or one still retrying after `timeout` s, is a CliError with the last error."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    with out.status(f"waiting for the import of {batch_id}") as spinner:
        while True:
            last = get_import(batch_id)
            if last is not None:
                if last["status"] == "completed":
                    return last
                if last["status"] == "failed":
                    raise CliError(f"the import of {batch_id} failed: {last['error']}")
                spinner.update(
                    f"import of {batch_id}: {last['status']}, "
                    f"{last['imported_tasks']}/{last['result_lines']} tasks"
                    + (f" (retrying: {last['error']})" if last.get("error") else "")
                )
            if time.monotonic() > deadline:
                state = f"{last['status']}: {last['error'] or 'no error'}" if last else "not queued"
                raise CliError(
                    f"the import of {batch_id} did not complete within {timeout:.0f} s ({state})"
                )
            time.sleep(interval)


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, ensure_ascii=False))


def _when(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"


@curation_app.command("schemas")
def schemas(as_json: JsonOption = False) -> None:
    """List the task schemas (latest version of each)."""
    body = request("GET", "/schemas").json()
    if as_json:
        return _print_json(body)
    table = Table("id", "version", "name", "Label Studio project")
    for s in body["data"]:
        table.add_row(
            s["id"], str(s["version"]), s["name"], str(s["label_studio_project_id"] or "-")
        )
    console.print(table)
    for problem in body.get("problems") or []:
        console.print(f"[yellow]not loaded:[/yellow] {problem}", highlight=False)


@curation_app.command("schema")
def schema(
    schema_id: str,
    version: Annotated[int, typer.Option(help="Version; 0 for the latest.")] = 0,
    label_config: Annotated[bool, typer.Option(help="Print the Label Studio config.")] = False,
    prompt: Annotated[bool, typer.Option(help="Print the prompt and JSON schema.")] = False,
) -> None:
    """Show one schema, its Label Studio config or its prompt."""
    params = {"version": version}
    if label_config:
        print(
            request(
                "GET", f"/schemas/{schema_id}/label_config", params={**params, "format": "xml"}
            ).text
        )
    elif prompt:
        _print_json(request("GET", f"/schemas/{schema_id}/prompt", params=params).json())
    else:
        _print_json(request("GET", f"/schemas/{schema_id}", params=params).json())


@curation_app.command("tasks")
def tasks(
    schema_id: Annotated[str, typer.Option("--schema", help="Only this schema id.")] = "",
    status: Annotated[str, typer.Option(help="pending, imported or annotated.")] = "",
    gold: Annotated[bool, typer.Option("--gold", help="Only gold tasks.")] = False,
    batch_id: Annotated[str, typer.Option("--batch", help="Only this batch's tasks.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List curation tasks, newest first."""
    params = {"schema_id": schema_id, "status": status, "gold_only": gold, "batch_id": batch_id}
    body = request("GET", "/tasks", params={**params, "limit": limit}).json()
    if as_json:
        return _print_json(body)
    table = Table("task", "schema", "batch", "custom_id", "status", "gold", "annotations")
    for t in body["data"]:
        table.add_row(
            str(t["id"]),
            f"{t['schema_id']}@{t['schema_version']}",
            t["batch_id"],
            t["custom_id"],
            t["status"],
            "★" if t["gold"] else "",
            str(t["annotation_count"]),
        )
    console.print(table)


@curation_app.command("gold")
def gold(
    task_ids: Annotated[list[int], typer.Argument(help="Label Studio task ids.")],
    remove: Annotated[bool, typer.Option("--remove", help="Take the gold star away.")] = False,
) -> None:
    """Gold-star tasks (in Label Studio too), or take the star away."""
    body = request("POST", "/tasks/gold", json={"task_ids": task_ids, "gold": not remove}).json()
    for t in body["data"]:
        console.print(f"task {t['id']}: {'gold' if t['gold'] else 'not gold'}")


@curation_app.command("stats")
def stats(
    schema_id: Annotated[str, typer.Option("--schema", help="Only this schema id.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Tasks, annotated, gold, corrected and agreement, per schema."""
    body = request("GET", "/stats", params={"schema_id": schema_id}).json()
    if as_json:
        return _print_json(body)
    table = Table("schema", "tasks", "annotated", "gold", "corrected", "agreement (n)")
    rows = body.get("schemas") or [{"schema_id": schema_id or "all", **body}]
    for s in rows:
        table.add_row(
            s["schema_id"],
            str(s["tasks"]),
            str(s["annotated"]),
            str(s["gold"]),
            str(s["corrected"]),
            f"{s['mean_agreement']:.2f} ({s['multi_annotated']})" if s["multi_annotated"] else "-",
        )
    console.print(table)


@curation_app.command("imports")
def imports(as_json: JsonOption = False) -> None:
    """Batch imports into Label Studio and their status."""
    body = request("GET", "/imports").json()
    if as_json:
        return _print_json(body)
    table = Table("batch", "schema_type", "status", "tasks", "skipped", "attempts", "error")
    for i in body["data"]:
        table.add_row(
            i["batch_id"],
            i["schema_type"],
            i["status"],
            f"{i['imported_tasks']}/{i['result_lines']}",
            str(i["skipped_lines"]),
            str(i["attempts"]),
            i["error"][:60],
        )
    console.print(table)


@curation_app.command("events")
def events(
    after: Annotated[int, typer.Option(min=0, help="Events after this sequence.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """The curation feed: annotations, gold stars and snapshots, oldest first."""
    body = request("GET", "/events", params={"after": after, "limit": limit}).json()
    if as_json:
        return _print_json(body)
    table = Table("sequence", "type", "task", "batch", "origin", "when")
    for e in body["data"]:
        data = e["data"] or {}
        table.add_row(
            str(e["sequence"]),
            e["type"],
            str(data.get("ls_task_id") or data.get("snapshot_id") or "-"),
            data.get("batch_id") or "-",
            data.get("origin") or "-",
            _when(e.get("create_time")),
        )
    console.print(table)
    if body["has_more"]:
        console.print(f"more: --after {body['last_id']}", highlight=False)


def _print_import(i: dict[str, Any]) -> None:
    console.print(
        f"[bold]{i['batch_id']}[/bold]  {i['schema_type']}  {i['status']}  "
        f"tasks {i['imported_tasks']}/{i['result_lines']}  skipped {i['skipped_lines']}  "
        f"predictions that did not fit {i['prediction_problems']}  "
        f"Label Studio project {i['label_studio_project_id'] or '-'}",
        highlight=False,
    )
    if i.get("error"):
        console.print(f"  last error: {i['error']}", highlight=False)


@curation_app.command("import")
def import_status(
    batch_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it completed.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    as_json: JsonOption = False,
) -> None:
    """One batch's import into Label Studio; with --wait, follow it until it completed."""
    if wait:
        found: dict[str, Any] | None = follow_import(batch_id, Console(stderr=True), timeout)
    else:
        found = get_import(batch_id)
        if found is None:
            raise CliError(
                f"no import for batch {batch_id!r} (only completed batches with "
                "metadata.schema_type are imported)"
            )
    assert found is not None
    _print_json(found) if as_json else _print_import(found)


def _print_snapshot(s: dict[str, Any]) -> None:
    console.print(
        f"[bold]{s['id']}[/bold]  {s['name']} v{s['version']}  format {s['format']}  "
        f"train {s['training_examples']} / validation {s['validation_examples']}  "
        f"(duplicates {s['duplicates_removed']}, incomplete {s['incomplete_skipped']})",
        highlight=False,
    )
    console.print(f"  training file:   {s['training_file_id']}", highlight=False)
    if s.get("validation_file_id"):
        console.print(f"  validation file: {s['validation_file_id']}", highlight=False)


@snapshot_app.command("create")
def snapshot_create(
    name: str,
    schema_id: Annotated[str, typer.Option("--schema", help="Only this schema id.")] = "",
    gold_only: Annotated[bool, typer.Option("--gold-only", help="Only gold tasks.")] = False,
    min_agreement: Annotated[float, typer.Option(help="Minimum agreement, 0-1.")] = 0.0,
    min_rating: Annotated[int, typer.Option(help="Minimum rating.")] = 0,
    since: Annotated[datetime | None, typer.Option(help="Annotated at or after.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Annotated before.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many examples.")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="openai_chat, alpaca, sharegpt, chatml.")
    ] = "openai_chat",
    validation_fraction: Annotated[float, typer.Option(help="Share for validation.")] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Build the next version of a dataset from annotated tasks."""
    body = {
        "name": name,
        "format": fmt,
        "validation_fraction": validation_fraction,
        "filter": {
            "schema_id": schema_id,
            "gold_only": gold_only,
            "min_agreement": min_agreement,
            "min_rating": min_rating,
            "limit": limit,
            "start_time": since.isoformat() if since else None,
            "end_time": until.isoformat() if until else None,
        },
    }
    snap = request("POST", "/snapshots", json=body).json()
    _print_json(snap) if as_json else _print_snapshot(snap)


@snapshot_app.command("list")
def snapshot_list(
    name: Annotated[str, typer.Option(help="Only this dataset.")] = "", as_json: JsonOption = False
) -> None:
    """List snapshots, newest first."""
    body = request("GET", "/snapshots", params={"name": name}).json()
    if as_json:
        return _print_json(body)
    table = Table("id", "name", "version", "format", "train", "validation", "created")
    for s in body["data"]:
        table.add_row(
            s["id"],
            s["name"],
            str(s["version"]),
            s["format"],
            str(s["training_examples"]),
            str(s["validation_examples"]),
            _when(s.get("create_time")),
        )
    console.print(table)


@snapshot_app.command("get")
def snapshot_get(snapshot_id: str) -> None:
    """One snapshot with its manifest."""
    _print_json(request("GET", f"/snapshots/{snapshot_id}").json())


@snapshot_app.command("download")
def snapshot_download(
    snapshot_id: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File; default stdout.")
    ] = None,
    split: Annotated[str, typer.Option(help="train or validation.")] = "train",
) -> None:
    """Write a snapshot's file (JSONL)."""
    content = request("GET", f"/snapshots/{snapshot_id}/content", params={"split": split}).content
    if output is None:
        sys.stdout.buffer.write(content)
    else:
        output.write_bytes(content)
        console.print(f"wrote {len(content.splitlines())} lines to {output}", highlight=False)
