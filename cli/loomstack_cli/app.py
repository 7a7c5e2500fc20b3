"""`loomstack`: the command tree, the local-stack commands (up, down, status) and `main()`.

Exit codes: 0 ok; 1 a followed batch ended failed, expired or cancelled; 2 a usage or API error,
printed as one line `error: <message> (param: ..., line: ...)`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import httpx
import openai
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from .batch_commands import batch_app
from .curation_commands import curation_app
from .fine_tune_commands import fine_tune_app
from .gateway_client import DEV_API_KEY, CliError, api_key, client, describe, root_url
from .local_stack import DEFAULT_MODEL_PATH, LocalStack, StackError
from .plugin_cli import plugin_groups
from .plugin_commands import plugins_app

EXIT_ERROR = 2

app = typer.Typer(
    help="Loomstack: batch LLM inference behind an OpenAI-compatible API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(batch_app, name="batch")
app.add_typer(curation_app, name="curation")
app.add_typer(fine_tune_app, name="fine-tune")
app.add_typer(plugins_app, name="plugins")
console = Console()
err_console = Console(stderr=True)

HomeOption = Annotated[Path, typer.Option(help="State directory (database, blobs, logs, pids).")]


def _model_path() -> Path:
    return Path(os.environ.get("LOOMSTACK_INFERENCE_MODEL_PATH") or DEFAULT_MODEL_PATH)


def _dev_key_refused(key: str) -> bool:
    """Whether the gateway refuses `key` because it is the development key and a key list
    that does not name it is configured (the gateway accepts it then only when listed)."""
    if key != DEV_API_KEY:
        return False
    listed = os.environ.get("LOOMSTACK_GATEWAY_API_KEYS", "")
    keys_file = os.environ.get("LOOMSTACK_GATEWAY_API_KEYS_FILE")
    if keys_file:
        with contextlib.suppress(OSError):
            listed += "," + Path(keys_file).read_text()
    items = [item.strip() for item in listed.replace("\n", ",").split(",") if item.strip()]
    if not items:
        return False
    entries = (item.rpartition(":") for item in items)
    return DEV_API_KEY not in {key if sep else project for key, sep, project in entries}


def _print_access(url: str, key: str) -> None:
    console.print(f"OpenAI base URL: [bold]{url}/v1[/bold]")
    if _dev_key_refused(key):
        console.print(
            "API key:         one of LOOMSTACK_GATEWAY_API_KEYS "
            f"(the development key {DEV_API_KEY} is not accepted with a key list)"
        )
        return
    console.print(f"API key:         [bold]{key}[/bold]")
    console.print(
        f"export LOOMSTACK_BASE_URL={url}/v1 LOOMSTACK_API_KEY={key}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def up(
    home: HomeOption = Path(".loomstack"),
    host: Annotated[str, typer.Option(help="Gateway address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port (0: any free one).")] = 8080,
    roles: Annotated[
        str, typer.Option(help="Inference roles; `api` alone runs no vLLM engine.")
    ] = "api,engine",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 600.0,
) -> None:
    """Start the inference service and the gateway in the background; wait until ready."""
    stack = LocalStack(home)
    key = api_key()
    states = stack.states()
    url = stack.url()
    if all(s.running for s in states) and url:
        console.print(f"already running (pids {', '.join(str(s.pid) for s in states)})")
        _print_access(url, key)
        return
    if any(s.running for s in states):
        err_console.print("partly running: stopping the leftover process first")
        stack.stop()
    _report_strays(stack.stop_stray_engines())
    model_path = _model_path()
    if "engine" in roles and not (model_path / "config.json").exists():
        raise CliError(
            f"no model at {model_path}: run `python scripts/prepare_model.py` "
            "or set LOOMSTACK_INFERENCE_MODEL_PATH"
        )
    try:
        with err_console.status("starting") as spinner:
            url = stack.start(
                host=host,
                port=port,
                roles=roles,
                model_path=model_path,
                api_key=key,
                timeout=timeout,
                on_wait=lambda what: spinner.update(f"{what}…"),
            )
    except StackError as exc:
        if exc.log_tail:
            err_console.print(exc.log_tail, highlight=False, markup=False, soft_wrap=True)
        raise CliError(f"{exc} (logs in {stack.logs})") from None
    console.print(f"[green]ready[/green] — logs in {stack.logs}")
    _print_access(url, key)
    if missing := stack.trainer_missing():
        console.print(
            f"fine-tuning: no trainer environment ({missing}); jobs fail until "
            "`make training-install` builds it (`make up` does)",
            highlight=False,
        )


def _report_strays(pids: list[int]) -> None:
    if pids:
        console.print(
            f"stopped {len(pids)} engine process(es) a killed inference process left running "
            f"(pids {', '.join(map(str, pids))})"
        )


@app.command()
def down(
    home: HomeOption = Path(".loomstack"),
    label_studio: Annotated[
        bool,
        typer.Option(help="Also stop the Label Studio `make labelstudio` started under HOME."),
    ] = True,
) -> None:
    """Stop the local stack (SIGTERM, then SIGKILL after 60 s), and its Label Studio."""
    stack = LocalStack(home)
    with err_console.status("stopping"):
        stopped = stack.stop()
    if not stopped:
        console.print("not running")
    for state in stopped:
        console.print(f"stopped {state.name} (pid {state.pid})")
    _report_strays(stack.stop_stray_engines())
    ls_dir = home / "labelstudio"
    if label_studio and (ls_dir / "server.pid").exists():
        # Its data stays; the next `make labelstudio` or `make demo` starts it again.
        stop = ["stop", "--data-dir", str(ls_dir)]
        subprocess.run(
            [sys.executable, "-m", "loomstack_curation.labelstudio_server", *stop], check=False
        )


@app.command()
def status(home: HomeOption = Path(".loomstack")) -> None:
    """Which processes run, whether the gateway is ready, and the models it serves."""
    stack = LocalStack(home)
    processes = Table("process", "pid", "state")
    for state in stack.states():
        label = "running" if state.running else ("stale pid file" if state.pid else "stopped")
        processes.add_row(state.name, str(state.pid or "-"), label)
    console.print(processes)

    # An explicit LOOMSTACK_BASE_URL wins; else the gateway this directory's stack runs.
    stack_url = stack.url()
    if "LOOMSTACK_BASE_URL" not in os.environ and stack_url:
        os.environ["LOOMSTACK_BASE_URL"] = f"{stack_url}/v1"
    url = root_url()
    try:
        ready = httpx.get(f"{url}/readyz", timeout=5)
    except httpx.TransportError as exc:
        console.print(f"gateway {url}: [red]unreachable[/red] ({exc})")
        return
    verdict = "[green]ready[/green]" if ready.status_code == 200 else "[red]not ready[/red]"
    console.print(f"gateway {url}: {verdict}")
    models = Table("model", "ready engines", "output tok/s", "context")
    for model in client().models.list().data:
        extra = model.model_extra or {}
        models.add_row(
            model.id,
            str(extra.get("ready_engines", "-")),
            f"{extra.get('throughput_tokens_per_second', 0):,.1f}",
            str(extra.get("max_model_len", "-")),
        )
    console.print(models)


def main() -> None:
    """Console entry point: runs the command, turning API and usage failures into exit code 2."""
    command = typer.main.get_command(app)
    assert isinstance(command, TyperGroup)
    for group in plugin_groups():
        if group.name not in command.commands:
            command.add_command(group)
    try:
        command()
    except CliError as exc:
        _fail(str(exc))
    except openai.OpenAIError as exc:
        _fail(describe(exc))


def _fail(message: str) -> None:
    # Plain print: one line, never wrapped to the terminal's width.
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_ERROR)
