"""A training service without the trainer environment refuses to start a job it cannot run: the
job fails saying how to install the trainer, never with a subprocess's FileNotFoundError.

Real processes: an inference service (api role: files and the model registry, no engine) and
a training service whose trainer python is missing, or is a python without Unsloth (the main
environment's, which is what a service gets when nothing is configured)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from training_support import FAST, TrainingClient, TrainingProcess, examples


@pytest.mark.parametrize(
    ("trainer_python", "says"),
    [
        ("/nonexistent/training-venv/bin/python", "/nonexistent/training-venv/bin/python does"),
        (sys.executable, "has no unsloth"),
    ],
    ids=["missing", "without-unsloth"],
)
def test_a_job_the_service_cannot_run_fails_saying_how_to_install_the_trainer(
    tmp_path: Path, inference_api_only: Any, trainer_python: str, says: str
) -> None:
    service = TrainingProcess(
        tmp_path / "training",
        inference_api_only.address,
        LOOMSTACK_TRAINING_TRAINER_PYTHON=trainer_python,
    ).start()
    client = TrainingClient(service.address, inference_api_only.address)
    try:
        job = client.create(client.upload(examples(8)), hyperparameters=FAST)
        assert client.wait_status(job.id, {"failed", "succeeded"}, 60) == "failed"
        error = client.get(job.id).error
        assert error.code == "trainer_unavailable"
        assert says in error.message
        assert "make training-install" in error.message
        assert "FileNotFoundError" not in error.message
        messages = [e.message for e in client.events(job.id)]
        assert not any(m.startswith("Trainer started") for m in messages)
        # The service said so when it started, too.
        assert "fine-tuning jobs fail until the trainer environment is installed" in (
            service.log_path.read_text()
        )
    finally:
        client.close()
        service.terminate()
