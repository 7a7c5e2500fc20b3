"""Fine-tuning jobs end to end on the real service: a real Unsloth run of a few steps, a
killed trainer, a cancel that keeps a checkpoint, and a service restart that reconciles."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from loomstack.training.v1 import training_pb2
from support import MODEL_NAME, wait_until
from training_support import (
    FAST,
    QUESTIONS,
    GatewayProcess,
    TrainingClient,
    TrainingProcess,
    examples,
    pid_alive,
)


def jsonl(lines: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def _runner_pid(client: TrainingClient, job_id: str) -> int:
    def pid() -> int:
        for e in client.events(job_id):
            if e.message.startswith("Trainer started (local process "):
                return int(e.message.rsplit(" ", 1)[1].rstrip(")"))
        return 0

    return int(wait_until(pid, 180, 0.2, "trainer start"))


def test_job_through_the_openai_client_trains_registers_and_serves(
    gateway: GatewayProcess, training_inference: object
) -> None:
    """files.create → fine_tuning.jobs.create/retrieve/list/list_events, checkpoints.list,
    with LoRA settings in method.supervised.hyperparameters; a real Unsloth run; a chat request
    sent the instant the job succeeds is answered with the adapter (the trained answer); the
    adapter is a model in GET /v1/models, and a batch naming it is answered with it too while
    the base model answers otherwise. The eval gate is one trace across the training and the
    inference service."""
    openai = gateway.client()
    train = openai.files.create(file=("train.jsonl", jsonl(examples(16))), purpose="fine-tune")
    held_out = openai.files.create(file=("val.jsonl", jsonl(examples(2))), purpose="fine-tune")
    hyperparameters = {
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "max_steps": 12,
        "save_steps": 6,
        "max_seq_length": 64,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
    }
    job = openai.fine_tuning.jobs.create(
        model=MODEL_NAME,
        training_file=train.id,
        validation_file=held_out.id,
        suffix="ducks",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )
    assert job.status in ("validating_files", "queued", "running")
    assert job.seed == 7 and job.hyperparameters.batch_size == 4

    question = [{"role": "user", "content": QUESTIONS[0]}]

    def answer(model: str) -> str:
        reply = openai.chat.completions.create(
            model=model, messages=question, temperature=0, max_tokens=16
        )
        return str(reply.choices[0].message.content)

    def finished() -> object:
        current = openai.fine_tuning.jobs.retrieve(job.id)
        return current if current.status in ("succeeded", "failed") else None

    done = wait_until(finished, 600, 0.2, "the job to finish")
    # As with OpenAI, the model is served the instant the job says it is done: asked at once,
    # with no retry, it answers with the adapter (not 503 while engines fetch the adapter).
    name = f"ft:{MODEL_NAME}:ducks:{job.id}"
    tuned = answer(name) if done.status == "succeeded" else ""
    assert done.status == "succeeded", done.error
    assert "eleven ducks" in tuned
    assert done.fine_tuned_model == name
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.finished_at and done.error is None
    assert job.id in [j.id for j in openai.fine_tuning.jobs.list(limit=100).data]
    # The eval gate ran both models on the held-out examples as batches and promoted the job.
    gate = done.model_extra["eval"]
    assert gate["examples"] == 2 and gate["promoted"] is True
    assert gate["fine_tuned"]["token_overlap"] > gate["base"]["token_overlap"]
    assert gate["fine_tuned"]["exact_match"] > gate["base"]["exact_match"]
    # result_files: the per-step metrics CSV, readable through the Files API.
    csv_text = openai.files.content(done.result_files[0]).text
    assert csv_text.splitlines()[0] == (
        "step,train_loss,learning_rate,tokens_per_second,trained_tokens,epoch"
    )
    assert len(csv_text.splitlines()) == 13

    events = openai.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(12, 0, -1))  # newest first
    assert all(m["train_loss"] > 0 and m["learning_rate"] > 0 for m in metrics)
    assert all(m["tokens_per_second"] > 0 for m in metrics)
    assert metrics[0]["train_loss"] < metrics[-1]["train_loss"]
    messages = [e.message for e in reversed(events)]
    assert messages[0].startswith("Validating training file")
    assert messages[-1] == f"The job has successfully completed: {name}"
    assert not any(m.startswith("No engine served") for m in messages)

    checkpoints = openai.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [12, 6]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{name}:ckpt-step-12"

    # Served with the adapter: GET /v1/models lists it; chat and a batch naming it use it.
    models = {m.id: m for m in openai.models.list().data}
    assert name in models and models[name].parent == MODEL_NAME  # type: ignore[attr-defined]
    assert f"{name}:candidate" not in models  # the eval gate's candidate is deleted again
    # The adapter reached the engine as an archive in the blob store, not through a shared path.
    archives = [f.filename for f in openai.files.list(purpose="adapter").data]
    assert f"{name.replace(':', '-')}.tar" in archives
    assert "ducks" not in answer(MODEL_NAME)

    # A batch names one model: the adapter's.
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": name, "messages": question, "temperature": 0, "max_tokens": 16},
        }
        for i in range(2)
    ]
    batch_file = openai.files.create(file=("b.jsonl", jsonl(lines)), purpose="batch")
    batch = openai.batches.create(
        input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_until(
        lambda: (b := openai.batches.retrieve(batch.id)).status == "completed" and b,
        180,
        0.5,
        "the batch",
    )
    output = openai.files.content(batch.output_file_id).text
    answers = [
        row["response"]["body"]["choices"][0]["message"]["content"]
        for row in map(json.loads, output.splitlines())
    ]
    assert len(answers) == 2 and all("eleven ducks" in a for a in answers)
    _assert_the_eval_gate_was_one_trace(training_inference.spans, job.id)  # type: ignore[attr-defined]


def _assert_the_eval_gate_was_one_trace(spans_file: Path, job_id: str) -> None:
    """The gate's span (training) parents its gRPC client calls to the inference service
    (the candidate's registration, both batches: upload, create, polls, output reads, the
    candidate's deletion), and the inference service's server span of each is their child."""
    spans = [json.loads(line) for line in spans_file.read_text().splitlines() if line.strip()]
    gate = next(
        s
        for s in spans
        if s["name"] == "training.eval_gate" and s["attributes"].get("loomstack.job_id") == job_id
    )
    assert gate["service"] == "loomstack-training" and gate["parent_id"] is None
    trace = [s for s in spans if s["trace_id"] == gate["trace_id"]]
    clients = {
        s["span_id"]: s
        for s in trace
        if s["parent_id"] == gate["span_id"] and "loomstack.inference.v1." in s["name"]
    }
    names = {s["name"].rsplit("/", 1)[-1] for s in clients.values()}
    assert {"CreateModel", "UploadFile", "CreateBatch", "GetBatch"} <= names, names
    assert {"DownloadFileContent", "DeleteModel"} <= names, names
    servers = [
        s for s in trace if s["service"] == "loomstack-inference" and s["parent_id"] in clients
    ]
    assert {s["parent_id"] for s in servers} == set(clients), "each call has its server span"


def test_bad_requests_through_the_openai_client(gateway: GatewayProcess) -> None:
    import openai as openai_module

    openai = gateway.client()
    bad = openai.files.create(
        file=("bad.jsonl", jsonl(examples(5)) + b"{broken\n"), purpose="fine-tune"
    )
    # The file's content is checked while the job is validating_files; the job fails with
    # OpenAI's error object.
    job = openai.fine_tuning.jobs.create(model=MODEL_NAME, training_file=bad.id)
    assert job.status == "validating_files"
    failed = wait_until(
        lambda: (j := openai.fine_tuning.jobs.retrieve(job.id)).status != "validating_files" and j,
        60,
        0.2,
        "the file check",
    )
    assert failed.status == "failed" and failed.error is not None
    assert "line 6: not valid JSON" in failed.error.message
    assert (failed.error.code, failed.error.param) == ("invalid_training_file", "training_file")
    with pytest.raises(openai_module.BadRequestError) as info:  # the request itself: at once
        openai.fine_tuning.jobs.create(model="no-such-model", training_file=bad.id)
    assert info.value.param == "model"
    good = openai.files.create(file=("t.jsonl", jsonl(examples(6))), purpose="fine-tune")
    with pytest.raises(openai_module.BadRequestError) as info:
        openai.fine_tuning.jobs.create(
            model=MODEL_NAME,
            training_file=good.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}},
        )
    assert info.value.param == "hyperparameters.batch_size"
    with pytest.raises(openai_module.NotFoundError):
        openai.fine_tuning.jobs.retrieve("ftjob-nope")


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
    stopped = wait_until(
        lambda: [
            e.message
            for e in client.events(job.id)
            if e.message.startswith("Trainer stopped after the cancel")
        ],
        30,
        0.2,
        "the runner to record the stop",
    )
    assert stopped[0].startswith("Trainer stopped after the cancel; last checkpoint at step")


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
