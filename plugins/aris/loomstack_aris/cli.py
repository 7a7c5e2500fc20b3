"""`loomstack aris ...`: the conquest API from the command line (through the gateway, with the
CLI's base URL and key)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loomstack_kit.plugins import CliContext

PREFIX = "/plugins/aris"
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def build_cli(context: CliContext) -> typer.Typer:
    """The `aris` command group."""
    app = typer.Typer(help="Aris: conquests, verdicts and Eidos examples.", no_args_is_help=True)
    console = Console()

    def show(conquest: dict[str, Any]) -> None:
        problem = f"  problem: {conquest['problem']}" if conquest.get("problem") else ""
        console.print(
            f"{conquest['id']}  {conquest['type']}  {conquest['status']}  {conquest['result']}  "
            f"{conquest['title']!r}  {conquest['philosopher'] or '-'} / "
            f"{conquest['domain'] or '-'}  batch {conquest['batch_id'] or '-'}{problem}",
            highlight=False,
        )

    @app.command("conquests")
    def conquests(
        type: Annotated[str, typer.Option(help="CANDIDATE, CV_PARSING, ...")] = "",
        status: Annotated[str, typer.Option(help="DRAFT, ANALYZING, COMPLETED, ...")] = "",
        result: Annotated[str, typer.Option(help="PENDING, VICTORY, DEFEAT, NEUTRAL")] = "",
        user: Annotated[str, typer.Option(help="The philosopher (user email).")] = "",
        domain: str = "",
        limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
        as_json: JsonOption = False,
    ) -> None:
        """List conquests, newest first."""
        params = {"type": type, "status": status, "result": result, "user_email": user}
        params = {k: v for k, v in {**params, "domain": domain}.items() if v}
        body = context.call("GET", f"{PREFIX}/conquests", params={**params, "limit": limit})
        if as_json:
            return context.print_json(body)
        table = Table("id", "type", "status", "result", "title", "user", "domain")
        for c in body["data"]:
            table.add_row(
                c["id"], c["type"], c["status"], c["result"], c["title"], c["philosopher"],
                c["domain"],
            )  # fmt: skip
        console.print(table)

    @app.command("show")
    def show_one(conquest_id: str, as_json: JsonOption = False) -> None:
        """One conquest, with its analysis."""
        body = context.call("GET", f"{PREFIX}/conquests/{conquest_id}")
        if as_json:
            return context.print_json(body)
        show(body)

    @app.command("create")
    def create(
        type: Annotated[str, typer.Option(help="The conquest type, e.g. CANDIDATE.")],
        title: Annotated[str, typer.Option()],
        description: str = "",
        user: Annotated[str, typer.Option(help="The philosopher (user email).")] = "",
        domain: str = "",
        example: Annotated[bool, typer.Option(help="Use it as an Eidos example.")] = False,
    ) -> None:
        """Create a conquest (DRAFT); run a batch whose metadata names its id to analyse it."""
        body = context.call(
            "POST",
            f"{PREFIX}/conquests",
            json={
                "type": type,
                "title": title,
                "description": description,
                "philosopher": user,
                "domain": domain,
                "use_as_example": example,
            },
        )
        show(body)
        console.print(
            f'batch metadata: {{"conquest_id": "{body["id"]}", "conquest_type": "{body["type"]}"}}',
            highlight=False,
        )

    @app.command("result")
    def set_result(
        conquest_id: str,
        result: Annotated[str, typer.Argument(help="VICTORY, DEFEAT, NEUTRAL or PENDING.")],
        notes: str = "",
    ) -> None:
        """Set a conquest's verdict (VICTORY also gold-stars its Label Studio tasks)."""
        body = context.call(
            "POST",
            f"{PREFIX}/conquests/{conquest_id}/result",
            json={"result": result, "result_notes": notes},
        )
        show(body)

    @app.command("sync")
    def sync() -> None:
        """Retry the pending VICTORY → gold star syncs now."""
        body = context.call("POST", f"{PREFIX}/sync/victories")
        console.print(
            f"synced {body['synced']}, waiting {body['waiting']}, failed {body['failed']}",
            highlight=False,
        )

    @app.command("icl")
    def icl(
        user: Annotated[str, typer.Option(help="The philosopher (user email).")] = "",
        domain: str = "",
        type: str = "",
        limit: Annotated[int, typer.Option(min=1, max=100)] = 5,
    ) -> None:
        """Eidos in-context-learning examples, as JSON."""
        params = {"user_email": user, "domain": domain, "conquest_type": type}
        params = {k: v for k, v in params.items() if v}
        context.print_json(
            context.call("GET", f"{PREFIX}/icl_examples", params={**params, "limit": limit})
        )

    @app.command("health")
    def health() -> None:
        """The Aristotle database's state."""
        context.print_json(context.call("GET", f"{PREFIX}/health"))

    return app
