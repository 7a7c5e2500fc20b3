"""Fine-tuning jobs end to end on the real service: a real Unsloth run of a few steps, a
killed trainer, a cancel that keeps a checkpoint, and a service restart that reconciles."""

from __future__ import annotations

import os
import signal

from loomstack.training.v1 import training_pb2
from support import MODEL_NAME, wait_until
from training_support import FAST, TrainingClient, TrainingProcess, examples, pid_alive


def _runner_pid(client: TrainingClient, job_id: str) -> int:
    def pid() -> int:
        for e in client.events(job_id):
            if e.message.startswith("Trainer started (local process "):
                return int(e.message.rsplit(" ", 1)[1].rstrip(")"))
        return 0

    return int(wait_until(pid, 60, 0.2, "trainer start"))


def test_job_trains_reports_metrics_and_checkpoints(client: TrainingClient) -> None:
    train = client.upload(examples(8))
    job = client.create(train, suffix="ducks", hyperparameters=FAST, seed=7)
    assert client.status(job.id) == "queued" or client.status(job.id) == "running"
    assert job.hyperparameters.lora_r == 4 and job.seed == 7

    assert client.wait_status(job.id, {"succeeded", "failed"}, 240) == "succeeded", client.get(
        job.id
    ).error.message
    done = client.get(job.id)
    assert done.fine_tuned_model == f"ft:{MODEL_NAME}:ducks:{job.id}"
    assert done.trained_steps == 2 and done.total_steps == 2
    assert done.trained_tokens > 0
    assert done.HasField("finish_time")

    events = client.events(job.id)
    metrics = [e.metrics for e in events if e.type == "metrics"]
    assert [m.step for m in metrics] == [2, 1]  # newest first
    assert all(
        m.train_loss > 0 and m.learning_rate > 0 and m.tokens_per_second > 0 for m in metrics
    )
    messages = [e.message for e in reversed(events)]
    assert messages[0].startswith("Validating training file")
    assert messages[-1] == f"The job has successfully completed: {done.fine_tuned_model}"

    checkpoints = client.checkpoints(job.id)
    assert [c.step_number for c in checkpoints] == [2, 1]
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-2")
    assert checkpoints[0].blob_id


def test_killed_trainer_fails_the_job_with_the_log_tail(client: TrainingClient) -> None:
    job = client.create(client.upload(examples(8)), hyperparameters=FAST)
    pid = _runner_pid(client, job.id)
    wait_until(
        lambda: any(e.message.startswith("Trainer loaded") for e in client.events(job.id)),
        120,
        0.2,
        "the trainer to load the model",
    )
    os.killpg(pid, signal.SIGKILL)
    assert client.wait_status(job.id, {"failed", "succeeded"}, 60) == "failed"
    error = client.get(job.id).error
    assert error.code == "trainer_failed"
    assert "killed by signal SIGKILL" in error.message
    assert "Trainer log (last lines)" in error.message and "Unsloth" in error.message


def test_cancel_stops_the_trainer_and_keeps_the_last_checkpoint(client: TrainingClient) -> None:
    slow = training_pb2.Hyperparameters()
    slow.CopyFrom(FAST)
    slow.max_steps = 500
    job = client.create(client.upload(examples(8)), hyperparameters=slow)
    pid = _runner_pid(client, job.id)
    wait_until(lambda: client.checkpoints(job.id), 180, 0.3, "a first checkpoint")
    cancelled = client.cancel(job.id)
    assert cancelled.status == training_pb2.FINE_TUNING_JOB_STATUS_CANCELLED
    wait_until(lambda: not pid_alive(pid), 30, 0.2, "the trainer to exit")
    assert client.status(job.id) == "cancelled"
    steps = [c.step_number for c in client.checkpoints(job.id)]
    assert steps and max(steps) < 500
    messages = [e.message for e in client.events(job.id)]
    assert any(
        m.startswith("Trainer stopped after the cancel; last checkpoint at step") for m in messages
    )


def test_service_restart_fails_the_job_it_was_running(
    client: TrainingClient, training_service: TrainingProcess, training_inference: object
) -> None:
    job = client.create(client.upload(examples(8)), hyperparameters=FAST)
    pid = _runner_pid(client, job.id)
    training_service.kill9()
    assert pid_alive(pid)  # the trainer runs in its own session: the restart must stop it
    training_service.start()
    wait_until(lambda: not pid_alive(pid), 30, 0.2, "the orphaned trainer to be stopped")
    restarted = TrainingClient(training_service.address, training_inference.address)  # type: ignore[attr-defined]
    try:
        assert restarted.status(job.id) == "failed"
        error = restarted.get(job.id).error
        assert error.code == "service_restarted"
        assert "restarted while the job was running" in error.message
    finally:
        restarted.close()
