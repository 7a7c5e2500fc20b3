"""The trainer's progress events (JSON lines, see trainer.py) turned into job updates.

Both runners feed every line the trainer prints here: the local runner from the process's
stdout, the Kubernetes runner from the pod's log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loomstack_kit.blobstore import BlobStore

from .artifacts import store_directory
from .jobs import Jobs

log = logging.getLogger(__name__)


@dataclass
class TrainerOutcome:
    """What the trainer reported by the time it exited."""

    done: dict[str, Any] | None = None
    cancelled: bool = False
    last_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)


class ProgressRecorder:
    """Applies one job's progress events to the database and the blob store."""

    def __init__(self, jobs: Jobs, blobs: BlobStore, job_id: str) -> None:
        self.jobs = jobs
        self.blobs = blobs
        self.job_id = job_id
        self.outcome = TrainerOutcome()

    def handle_line(self, line: str) -> None:
        """One line of the trainer's stdout (anything that is not an event is logged)."""
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.info("trainer output", extra={"job_id": self.job_id, "line": line[:500]})
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "started":
            self.jobs.set_total_steps(self.job_id, int(event["total_steps"]))
            self.jobs.add_event(
                self.job_id,
                "info",
                f"Trainer loaded the model: {event.get('examples')} examples, "
                f"{event['total_steps']} steps",
            )
        elif kind == "step":
            metrics = {
                k: event[k]
                for k in (
                    "step",
                    "total_steps",
                    "train_loss",
                    "learning_rate",
                    "epoch",
                    "trained_tokens",
                    "tokens_per_second",
                )
                if k in event
            }
            self.outcome.last_metrics = metrics
            self.jobs.record_step(self.job_id, metrics)
        elif kind == "checkpoint":
            step = int(event["step"])
            path = Path(event["path"])
            if path.is_dir():
                blob_id = store_directory(self.blobs, f"{self.job_id}-ckpt-{step}", path)
                self.jobs.add_checkpoint(self.job_id, step, self.outcome.last_metrics, blob_id)
                self.outcome.checkpoints.append(step)
        elif kind == "done":
            self.outcome.done = event
        elif kind == "cancelled":
            self.outcome.cancelled = True
