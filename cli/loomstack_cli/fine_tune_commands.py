"""`loomstack fine-tune …`: create, follow, inspect and cancel fine-tuning jobs."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import fine_tune_progress
from .gateway_client import client

EXIT_JOB_UNSUCCESSFUL = 1

fine_tune_app = typer.Typer(
    help="Fine-tuning jobs (LoRA) over the OpenAI fine-tuning API.", no_args_is_help=True
)
console = Console()
progress_console = Console(stderr=True)


def hyperparameters(
    *,
    n_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_steps: int | None = None,
    lora_r: int | None = None,
) -> dict[str, Any]:
    """`method.supervised.hyperparameters` with only the settings that were given."""
    given = {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_steps": max_steps,
        "lora_r": lora_r,
    }
    return {k: v for k, v in given.items() if v is not None}


def _follow(job: Any, interval: float) -> None:
    try:
        outcome = fine_tune_progress.follow(client(), job, progress_console, interval)
    except KeyboardInterrupt:
        progress_console.print(
            f"stopped waiting; {job.id} goes on (`loomstack fine-tune get {job.id}`)"
        )
        raise typer.Exit(130) from None
    fine_tune_progress.summary(outcome, console)
    if outcome.job.status != "succeeded":
        raise typer.Exit(EXIT_JOB_UNSUCCESSFUL)


@fine_tune_app.command()
def create(
    training_file: Annotated[str, typer.Argument(help="File id (purpose fine-tune).")],
    model: Annotated[str, typer.Option(help="Base model.")] = "SmolLM2-135M-Instruct",
    validation_file: Annotated[
        str | None, typer.Option(help="File id of held-out examples (runs the eval gate).")
    ] = None,
    suffix: Annotated[str | None, typer.Option(help="Part of the model name.")] = None,
    n_epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
) -> None:
    """Create a fine-tuning job from TRAINING_FILE; print its id."""
    hp = hyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_steps=max_steps,
        lora_r=lora_r,
    )
    # Loomstack's extra settings (max_steps, lora_r, learning_rate) ride in OpenAI's
    # method.supervised.hyperparameters, which the client's types do not list.
    method: Any = {"type": "supervised", "supervised": {"hyperparameters": hp}}
    extra: dict[str, Any] = {}
    if seed is not None:
        extra["seed"] = seed
    job = client().fine_tuning.jobs.create(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        suffix=suffix,
        method=method,
        **extra,
    )
    console.print(job.id, highlight=False)
    if wait:
        _follow(job, interval)


@fine_tune_app.command()
def wait(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
) -> None:
    """Follow a job to its end (steps, loss, messages), then print the eval gate."""
    _follow(client().fine_tuning.jobs.retrieve(job_id), interval)


@fine_tune_app.command()
def get(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job object.")] = False,
) -> None:
    """Show one job and its eval gate result."""
    job = client().fine_tuning.jobs.retrieve(job_id)
    if as_json:
        console.print_json(job.model_dump_json())
        return
    fine_tune_progress.summary(fine_tune_progress.JobOutcome(job, [], 0.0), console)


@fine_tune_app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
) -> None:
    """List jobs, newest first."""
    table = Table("id", "status", "model", "fine-tuned model", "steps", "created")
    for job in client().fine_tuning.jobs.list(limit=limit).data:
        steps = (
            f"{fine_tune_progress.extra(job, 'trained_steps') or 0}/"
            f"{fine_tune_progress.extra(job, 'total_steps') or 0}"
        )
        created = time.strftime("%m-%d %H:%M", time.localtime(job.created_at))
        table.add_row(job.id, job.status, job.model, job.fine_tuned_model or "-", steps, created)
    console.print(table)


@fine_tune_app.command()
def events(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest last.")] = 50,
) -> None:
    """A job's messages and step metrics."""
    page = client().fine_tuning.jobs.list_events(job_id, limit=limit).data
    for event in reversed(page):
        when = time.strftime("%H:%M:%S", time.localtime(event.created_at))
        console.print(f"{when} {event.level:5} {event.message}", highlight=False)


@fine_tune_app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Cancel a job (it stops within a step and keeps its last checkpoint)."""
    job = client().fine_tuning.jobs.cancel(job_id)
    console.print(f"{job.id}: {job.status}", highlight=False)
