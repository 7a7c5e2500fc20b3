"""`loomstack plugins ...`: the plugins every service hosts, and the events their result
handlers failed on (the deliveries commands need an admin key)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .gateway_client import call

plugins_app = typer.Typer(
    help="Plugins: what each contributes, and their handlers' failed deliveries.",
    no_args_is_help=True,
)
console = Console()
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, ensure_ascii=False))


@plugins_app.command("list")
def list_plugins(as_json: JsonOption = False) -> None:
    """List the installed plugins: loaded, failed (and why) or disabled, per service."""
    body = call("GET", "/plugins").json()
    if as_json:
        return _print_json(body)
    table = Table("plugin", "state", "version", "services", "contributes")
    for p in body["data"]:
        services = ", ".join(
            f"{name}: {s['state']}" + (f" ({s['reason']})" if s["reason"] else "")
            for name, s in p["services"].items()
        )
        contributes = "; ".join(
            f"{kind} {', '.join(names)}" for kind, names in p["contributions"].items()
        )
        table.add_row(p["id"], p["state"], p["version"] or "-", services, contributes or "-")
    console.print(table)


@plugins_app.command("deliveries")
def deliveries(
    status: Annotated[str, typer.Option(help="retrying or dead; empty for both.")] = "",
    plugin: Annotated[str, typer.Option(help="Only this plugin's.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: JsonOption = False,
) -> None:
    """List the events plugin handlers failed on (an admin key)."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if plugin:
        params["plugin"] = plugin
    body = call("GET", "/plugin_deliveries", params=params).json()
    if as_json:
        return _print_json(body)
    table = Table("id", "plugin", "handler", "event", "status", "attempts", "error")
    for d in body["data"]:
        table.add_row(
            str(d["id"]),
            d["plugin"],
            d["handler"],
            f"{d['feed']}#{d['sequence']} {d['event_type']}",
            d["status"],
            str(d["attempts"]),
            (d["error"] or "")[:80],
        )
    console.print(table)


@plugins_app.command("retry")
def retry(delivery_id: int) -> None:
    """Deliver a dead-lettered event again (an admin key)."""
    body = call("POST", f"/plugin_deliveries/{delivery_id}/retry").json()
    console.print(f"delivery {body['id']} of {body['plugin']}/{body['handler']}: {body['status']}")
