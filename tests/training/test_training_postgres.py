"""The training service process on PostgreSQL (a fresh database) with its blobs in the database
too, as a cluster runs it: a job's file check, the claim by the local runner, a trainer start
and a cancel, a kill -9 of the service and the reconcile at the next start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loomstack.training.v1 import training_pb2
from support import postgres_database, wait_until
from training_support import FAST, TrainingClient, TrainingProcess, examples


@pytest.fixture(scope="module")
def pg_training(
    tmp_path_factory: pytest.TempPathFactory, training_inference: object, trainer_python: str
) -> Iterator[TrainingProcess]:
    with postgres_database() as url:
        process = TrainingProcess(
            tmp_path_factory.mktemp("training-pg"),
            training_inference.address,  # type: ignore[attr-defined]
            LOOMSTACK_TRAINING_DATABASE_URL=url,
            LOOMSTACK_TRAINING_BLOB_BACKEND="database",
        ).start()
        try:
            yield process
        finally:
            process.terminate()


def _client(process: TrainingProcess, inference: object) -> TrainingClient:
    return TrainingClient(process.address, inference.address)  # type: ignore[attr-defined]


def _started(client: TrainingClient, job_id: str) -> None:
    wait_until(
        lambda: any(e.message.startswith("Trainer started") for e in client.events(job_id)),
        180,
        0.2,
        "the trainer to start",
    )


def test_jobs_on_postgresql(pg_training: TrainingProcess, training_inference: object) -> None:
    slow = training_pb2.Hyperparameters()
    slow.CopyFrom(FAST)
    slow.max_steps = 500
    client = _client(pg_training, training_inference)
    try:
        bad = client.create(client.upload([*examples(4), "{broken\n"]))
        assert client.wait_status(bad.id, {"failed", "queued"}, 60) == "failed"
        assert "line 5: " in client.get(bad.id).error.message

        job = client.create(client.upload(examples(6)), hyperparameters=slow)
        assert client.wait_status(job.id, {"running", "failed"}, 120) == "running"
        _started(client, job.id)
        cancelled = client.cancel(job.id)
        assert cancelled.status == training_pb2.FINE_TUNING_JOB_STATUS_CANCELLED
        messages = [e.message for e in client.events(job.id)]
        assert any(m.startswith("Files validated (6 training examples") for m in messages)

        # A service killed mid-run fails the job at its next start, on PostgreSQL too.
        lost = client.create(client.upload(examples(6)), hyperparameters=slow)
        assert client.wait_status(lost.id, {"running", "failed"}, 120) == "running"
        _started(client, lost.id)
    finally:
        client.close()
    pg_training.kill9()
    pg_training.start()
    client = _client(pg_training, training_inference)
    try:
        assert client.wait_status(lost.id, {"failed"}, 60) == "failed"
        assert client.get(lost.id).error.code == "service_restarted"
        assert client.status(job.id) == "cancelled"
        assert client.status(bad.id) == "failed"
    finally:
        client.close()
