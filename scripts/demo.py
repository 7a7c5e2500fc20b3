"""`make demo`: the whole loop on the embedded default, on CPU, in minutes.

1. Label Studio (started with the data it had last time, or fresh) and the local stack
   (`loomstack up`: inference, curation, training, gateway);
2. the example batch (examples/batch.jsonl) with a progress bar and a summary;
3. a support-ticket batch (examples/tickets.jsonl) prompted with the `classify_ticket` schema and
   `metadata.curation_auto_accept=true`: the curation service imports it into Label Studio with
   each fitting answer accepted as an annotation (by the user `auto-accept`);
4. a dataset snapshot of those tasks with a validation split;
5. a LoRA fine-tune of a few steps (progress: step, loss) whose eval gate compares base and
   fine-tuned model on the held-out tickets;
6. the fine-tuned model (`ft:...`) answers the held-out tickets as a batch, next to the base model;
7. the eval gate's result and how long each stage took.

Every failure names its stage and the log to read. The stack and Label Studio keep running
afterwards (`make down` stops both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
from rich.console import Console
from rich.table import Table

from loomstack_cli import batch_progress, fine_tune_progress
from loomstack_cli.curation_commands import follow_import, request
from loomstack_cli.gateway_client import CliError, client, describe

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMA = "classify_ticket"
DATASET = "demo-tickets"
console = Console()
err = Console(stderr=True)


class StageFailed(Exception):
    """A stage did not finish; the message says why, `log` where to look."""

    def __init__(self, message: str, log: Path | str = "") -> None:
        super().__init__(message)
        self.log = str(log)


class Stages:
    """Runs named stages, times them, and turns a failure into one clear message."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str, log: Path | str) -> Iterator[None]:
        console.rule(f"[bold]{name}")
        started = time.monotonic()
        try:
            yield
        except StageFailed as exc:
            raise StageFailed(f"stage '{name}' failed: {exc}", exc.log or log) from None
        except (CliError, openai.OpenAIError, OSError, TimeoutError) as exc:
            message = describe(exc) if isinstance(exc, openai.OpenAIError) else str(exc)
            raise StageFailed(f"stage '{name}' failed: {message}", log) from None
        self.timings.append((name, time.monotonic() - started))
        console.print(f"[green]done[/green] in {self.timings[-1][1]:.1f} s", highlight=False)

    def table(self) -> Table:
        table = Table("stage", "seconds", title="stage timings", title_justify="left")
        for name, seconds in self.timings:
            table.add_row(name, f"{seconds:.1f}")
        table.add_row("[bold]total", f"[bold]{sum(s for _, s in self.timings):.1f}")
        return table


def _run(argv: list[str], what: str, log: Path | str) -> None:
    done = subprocess.run(argv, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise StageFailed(f"{what} exited with code {done.returncode}", log)


# ---- stages ------------------------------------------------------------------------------------


def start_label_studio(args: argparse.Namespace, home: Path) -> bool:
    """Label Studio with last time's data (or fresh); True if it had to be started."""
    ls_dir = (ROOT / args.label_studio_dir).resolve()
    connection = ls_dir / "connection.env"
    pid_file = ls_dir / "server.pid"
    if pid_file.exists() and connection.exists() and _healthy(connection):
        console.print(f"Label Studio runs already ({_connection(connection)['LABEL_STUDIO_URL']})")
        return False
    if not (ls_dir / "data").exists() and (home / "curation.db").exists():
        # The curation database maps schemas and tasks to a Label Studio whose data is gone.
        subprocess.run([str(BIN / "loomstack"), "down"], cwd=ROOT, check=False)
        stale = home / f"curation.db.stale-{int(time.time())}"
        (home / "curation.db").rename(stale)
        console.print(
            f"[yellow]Label Studio's data is gone: moved the curation database to {stale}"
        )
    _run(
        [
            sys.executable,
            "-m",
            "loomstack_curation.labelstudio_server",
            "start",
            "--venv",
            str(ROOT / args.label_studio_venv),
            "--data-dir",
            str(ls_dir),
            "--port",
            str(args.label_studio_port),
            "--username",
            args.label_studio_user,
            "--password",
            args.label_studio_password,
            "--keep-data",
        ],
        "Label Studio",
        ls_dir / "server.log",
    )
    return True


def _connection(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        found[key.strip()] = value.strip()
    return found


def _healthy(connection: Path) -> bool:
    from loomstack_curation.labelstudio_server import health

    return health(_connection(connection).get("LABEL_STUDIO_URL", ""))


def start_stack(started_label_studio: bool, connection: Path, home: Path) -> None:
    loomstack = str(BIN / "loomstack")
    running = home / "run" / "gateway.url"
    # A running curation service reads Label Studio's connection file only when it starts.
    stale = running.exists() and (
        started_label_studio or connection.stat().st_mtime > running.stat().st_mtime
    )
    if stale:
        console.print("restarting the stack: its curation service must connect to Label Studio")
        _run([loomstack, "down", "--no-label-studio"], "loomstack down", home / "logs")
    _run([loomstack, "up"], "loomstack up", home / "logs")


def example_batch(home: Path) -> None:
    _run(
        [
            str(BIN / "loomstack"),
            "batch",
            "submit",
            str(ROOT / "examples" / "batch.jsonl"),
            "--metadata",
            "source=make-demo",
            "--wait",
            "--download",
            str(home / "demo-output"),
        ],
        "loomstack batch submit",
        home / "logs" / "inference.log",
    )


def base_model(api: openai.OpenAI) -> str:
    models = [m.id for m in api.models.list().data if not m.id.startswith("ft:")]
    if not models:
        raise StageFailed("the gateway lists no base model")
    return models[0]


def submit(
    api: openai.OpenAI, lines: list[dict[str, Any]], metadata: dict[str, str]
) -> batch_progress.Outcome:
    """Uploads the lines as a batch and follows it to a completed end."""
    content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    uploaded = api.files.create(file=("demo.jsonl", content), purpose="batch")
    batch = api.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    console.print(f"{batch.id} ({len(lines)} requests, metadata {metadata})", highlight=False)
    outcome = batch_progress.follow(api, batch, err)
    if outcome.batch.status != "completed":
        raise StageFailed(f"{batch.id} ended {outcome.batch.status}: {outcome.batch.errors}")
    return outcome


def ticket_batch(api: openai.OpenAI, model: str) -> str:
    """The tickets as classify_ticket requests (the schema's prompt and structured output)."""
    prompt = request("GET", f"/schemas/{SCHEMA}/prompt").json()
    text = (ROOT / "examples" / "tickets.jsonl").read_text()
    tickets = [json.loads(x) for x in text.split("\n") if x.strip()]
    lines = [
        {
            "custom_id": t["custom_id"],
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [
                    {"role": "system", "content": prompt["system_prompt"]},
                    {"role": "user", "content": t["ticket"]},
                ],
                "response_format": prompt["response_format"],
                "temperature": 0,
                "max_tokens": 60,
            },
        }
        for t in tickets
    ]
    outcome = submit(
        api,
        lines,
        {"schema_type": SCHEMA, "curation_auto_accept": "true", "source": "make-demo"},
    )
    # What auto-accept will take as labels: the base model's own structured answers.
    assert outcome.batch.output_file_id is not None
    labels: Counter[str] = Counter()
    for row in _rows(api.files.content(outcome.batch.output_file_id).text):
        try:
            labels[" / ".join(map(str, json.loads(_content(row)).values()))] += 1
        except (ValueError, AttributeError):
            labels["(not JSON)"] += 1
    console.print(
        "the model's answers: " + ", ".join(f"{k} ×{n}" for k, n in labels.most_common()),
        highlight=False,
    )
    return outcome.batch.id


def _rows(jsonl: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in jsonl.split("\n") if x.strip()]


def _content(row: dict[str, Any]) -> str:
    return str(row["response"]["body"]["choices"][0]["message"]["content"])


def curation_import(batch_id: str) -> None:
    imported = follow_import(batch_id, err, timeout=300)
    tasks = request(
        "GET", "/tasks", params={"batch_id": batch_id, "status": "annotated", "limit": 1000}
    ).json()["data"]
    console.print(
        f"{imported['imported_tasks']} tasks in Label Studio project "
        f"{imported['label_studio_project_id']}; {len(tasks)} auto-accepted (annotator "
        f"auto-accept), {imported['prediction_problems']} left for a person",
        highlight=False,
    )

    if not tasks:
        raise StageFailed("no task was auto-accepted (did every answer fail the schema?)")


def snapshot() -> dict[str, Any]:
    snap: dict[str, Any] = request(
        "POST",
        "/snapshots",
        json={"name": DATASET, "filter": {"schema_id": SCHEMA}, "validation_fraction": 0.25},
    ).json()
    console.print(
        f"{snap['id']}: {snap['name']} v{snap['version']}, train {snap['training_examples']} / "
        f"validation {snap['validation_examples']} examples",
        highlight=False,
    )
    if not snap.get("validation_file_id"):
        raise StageFailed("the snapshot has no validation examples for the eval gate")
    return snap


def fine_tune(api: openai.OpenAI, model: str, snap: dict[str, Any], max_steps: int) -> Any:
    hyperparameters = {
        "n_epochs": 3,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_steps": max_steps,
        "save_steps": max_steps,  # one checkpoint, at the end
        "lora_r": 16,
    }
    method: Any = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    job = api.fine_tuning.jobs.create(
        model=model,
        training_file=snap["training_file_id"],
        validation_file=snap["validation_file_id"],
        suffix="demo",
        seed=7,
        method=method,
    )
    console.print(f"{job.id}: {hyperparameters}", highlight=False)
    outcome = fine_tune_progress.follow(api, job, err, interval=1.0, timeout=1800)
    fine_tune_progress.summary(outcome, console)
    if outcome.job.status != "succeeded":
        raise StageFailed(f"{job.id} ended {outcome.job.status}")
    return outcome.job


def compare(api: openai.OpenAI, base: str, tuned: str, snap: dict[str, Any]) -> None:
    """Base and fine-tuned model on the held-out tickets, without structured output."""
    held_out = request(
        "GET", f"/snapshots/{snap['id']}/content", params={"split": "validation"}
    ).text
    examples = [row["messages"] for row in _rows(held_out)]

    def lines(model: str) -> list[dict[str, Any]]:
        return [
            {
                "custom_id": f"held-out-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": messages[:-1],
                    "temperature": 0,
                    "max_tokens": 40,
                },
            }
            for i, messages in enumerate(examples)
        ]

    answers = {}
    for model in (base, tuned):
        outcome = submit(api, lines(model), {"source": "make-demo"})
        assert outcome.batch.output_file_id is not None
        text = api.files.content(outcome.batch.output_file_id).text
        answers[model] = {row["custom_id"]: _content(row) for row in _rows(text)}
    table = Table("ticket", "label (auto-accepted)", "base model", "fine-tuned model")
    for i, messages in enumerate(examples):
        table.add_row(
            messages[-2]["content"][:60],
            messages[-1]["content"],
            " ".join(answers[base][f"held-out-{i}"].split())[:80],
            " ".join(answers[tuned][f"held-out-{i}"].split())[:80],
        )
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=".loomstack")
    parser.add_argument("--label-studio-venv", default=".cache/labelstudio-venv")
    parser.add_argument("--label-studio-dir", default=".loomstack/labelstudio")
    parser.add_argument("--label-studio-port", type=int, default=8089)
    parser.add_argument("--label-studio-user", default="admin@loomstack.local")
    parser.add_argument("--label-studio-password", default="loomstack-admin")
    parser.add_argument("--max-steps", type=int, default=12, help="fine-tuning steps")
    args = parser.parse_args()
    home = (ROOT / args.home).resolve()
    logs = home / "logs"
    stages = Stages()
    try:
        with stages.stage("Label Studio", ROOT / args.label_studio_dir / "server.log"):
            started = start_label_studio(args, home)
        with stages.stage("local stack (loomstack up)", logs):
            start_stack(started, ROOT / args.label_studio_dir / "connection.env", home)
        api = client()
        with stages.stage("example batch", logs / "inference.log"):
            example_batch(home)
        with stages.stage("ticket batch (schema classify_ticket)", logs / "inference.log"):
            model = base_model(api)
            batch_id = ticket_batch(api, model)
        with stages.stage("curation import + auto-accept", logs / "curation.log"):
            curation_import(batch_id)
        with stages.stage("dataset snapshot", logs / "curation.log"):
            snap = snapshot()
        with stages.stage("fine-tune + eval gate", logs / "training.log"):
            job = fine_tune(api, model, snap, args.max_steps)
        tuned = job.fine_tuned_model
        if tuned:
            with stages.stage("fine-tuned model answers a batch", logs / "inference.log"):
                compare(api, model, tuned, snap)
        else:
            console.print(
                "[yellow]The eval gate did not promote the adapter: no fine-tuned model to ask."
            )
    except StageFailed as exc:
        err.print(f"[red]demo: {exc}[/red]", highlight=False)
        if exc.log:
            err.print(f"demo: see {exc.log}", highlight=False)
        if stages.timings:
            err.print(stages.table())
        return 1
    except KeyboardInterrupt:
        err.print("demo: interrupted")
        return 130
    console.rule("[bold]result")
    gate = fine_tune_progress.eval_table(job)
    if gate is not None:
        console.print(gate)
    console.print(f"fine-tuned model: [bold]{tuned or '-'}[/bold]", highlight=False)
    console.print(stages.table())
    console.print(
        "\nThe stack and Label Studio still run: the openai client works against "
        "http://127.0.0.1:8080/v1, Label Studio shows the auto-accepted tasks at "
        f"http://127.0.0.1:{args.label_studio_port} ({args.label_studio_user} / "
        f"{args.label_studio_password}); `make down` stops everything.",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
