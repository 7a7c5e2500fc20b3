"""Bad fine-tuning requests are refused before anything trains, naming the line or field.

As OpenAI does: a bad request (model, hyperparameters, suffix, a missing or non-fine-tune file)
is refused at create (INVALID_ARGUMENT, nothing stored); the files' content is checked while the
job is `validating_files`, and a bad file fails the job with OpenAI's error object. Through the
real training service (gRPC) with files in the real inference service."""

from __future__ import annotations

import json

import grpc
import pytest

from loomstack.training.v1 import training_pb2
from loomstack_kit.database import create_db_engine
from loomstack_training.jobs import Jobs
from loomstack_training.validation import Hyperparameters
from support import MODEL_NAME, MODEL_PATH
from training_support import TrainingClient, TrainingProcess, chat_example, examples


def _refused(client: TrainingClient, training_file: str, **kwargs: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        client.create(training_file, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def _failed(client: TrainingClient, training_file: str, **kwargs: object) -> tuple[str, str]:
    """Created in `validating_files`, then failed by the file check: (param, message)."""
    job = client.create(training_file, **kwargs)
    assert job.status == training_pb2.FINE_TUNING_JOB_STATUS_VALIDATING_FILES
    assert client.wait_status(job.id, {"failed", "queued"}, 120) == "failed"
    error = client.get(job.id).error
    assert error.code == f"invalid_{error.param}", error
    assert not client.checkpoints(job.id)
    return error.param, error.message


def test_invalid_lines_are_reported_with_line_numbers(client: TrainingClient) -> None:
    good = [json.dumps(e) + "\n" for e in examples(6)]
    wrong_role = chat_example("hi")
    wrong_role["messages"][0]["role"] = "human"
    no_assistant = {"messages": [{"role": "user", "content": "hi"}]}
    lines = [
        good[0],
        "{not json\n",
        good[1],
        json.dumps(wrong_role) + "\n",
        json.dumps(no_assistant) + "\n",
        *good[2:],
    ]
    param, message = _failed(client, client.upload(lines))
    assert param == "training_file"
    assert "line 2: not valid JSON" in message
    assert "line 4: messages[0].role is 'human'" in message
    assert "line 5: no assistant message" in message


def test_too_few_examples_and_token_limit(client: TrainingClient) -> None:
    assert "at least 4 are required" in _failed(client, client.upload(examples(2)))[1]
    long = [*examples(5), chat_example("word " * 200)]
    _, message = _failed(
        client,
        client.upload(long),
        hyperparameters=training_pb2.Hyperparameters(max_seq_length=64),
    )
    assert "line 6:" in message and "over the limit of 64" in message


def test_unknown_model_hyperparameters_and_validation_format(client: TrainingClient) -> None:
    train = client.upload(examples(6))
    assert "unknown base model 'no-such-model'" in _refused(client, train, model="no-such-model")
    assert "hyperparameters.n_epochs is 0" in _refused(
        client, train, hyperparameters=training_pb2.Hyperparameters(n_epochs=0)
    )
    assert "hyperparameters.lora_dropout" in _refused(
        client, train, hyperparameters=training_pb2.Hyperparameters(lora_dropout=1.5)
    )
    assert "hyperparameters.lora_r" in _refused(
        client, train, hyperparameters=training_pb2.Hyperparameters(lora_r=1000)
    )
    batch_file = client.upload(examples(6), purpose="batch")
    assert "purpose 'batch'" in _refused(client, batch_file)
    assert "purpose 'batch'" in _refused(client, train, validation_file=batch_file)
    assert "no file 'file-nope'" in _refused(client, "file-nope")
    assert "suffix" in _refused(client, train, suffix="x" * 30)
    # Nothing was stored for any refused request.
    listed = client.jobs.ListFineTuningJobs(
        training_pb2.ListFineTuningJobsRequest(), metadata=client.metadata, timeout=10
    )
    assert not [j for j in listed.jobs if j.training_file == train]
    # A validation file in another format fails the job while its files are validated.
    other_format = client.upload([{"prompt": "5 + 6?", "completion": "11"}])
    param, message = _failed(client, train, validation_file=other_format)
    assert param == "validation_file"
    assert "validation_file is in prompt_completion format" in message


def test_a_restart_validates_the_jobs_an_earlier_run_left_validating(
    client: TrainingClient, training_service: TrainingProcess, training_inference: object
) -> None:
    """A job recorded in `validating_files` by a process that stopped before its file check is
    checked at the next start (here: too few examples, so it fails with the file's error)."""
    too_few = client.upload(examples(2))
    training_service.terminate()
    jobs = Jobs(create_db_engine(f"sqlite:///{training_service.home / 'training.db'}"))
    left = jobs.create(
        project="default",
        model=MODEL_NAME,
        base_model_path=MODEL_PATH,
        training_file=too_few,
        validation_file=None,
        suffix="left",
        seed=1,
        hyperparameters=Hyperparameters(1, 2, 1e-3, 64, 4, 8, 0.0, ("q_proj",)),
        metadata={},
        runner="local",
    )
    jobs.engine.dispose()
    training_service.start()
    restarted = TrainingClient(training_service.address, training_inference.address)  # type: ignore[attr-defined]
    try:
        assert restarted.wait_status(left.id, {"failed", "queued"}, 60) == "failed"
        error = restarted.get(left.id).error
        assert (error.code, error.param) == ("invalid_training_file", "training_file")
        assert "at least 4 are required" in error.message
    finally:
        restarted.close()
