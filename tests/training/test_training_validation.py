"""Bad fine-tuning requests are refused before anything trains, naming the line or field.

Through the real training service (gRPC) with files in the real inference service."""

from __future__ import annotations

import json

import grpc
import pytest

from loomstack.training.v1 import training_pb2
from training_support import TrainingClient, chat_example, examples


def _refused(client: TrainingClient, training_file: str, **kwargs: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        client.create(training_file, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


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
    message = _refused(client, client.upload(lines))
    assert "line 2: not valid JSON" in message
    assert "line 4: messages[0].role is 'human'" in message
    assert "line 5: no assistant message" in message


def test_too_few_examples_and_token_limit(client: TrainingClient) -> None:
    assert "at least 4 are required" in _refused(client, client.upload(examples(2)))
    long = [*examples(5), chat_example("word " * 200)]
    message = _refused(
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
    other_format = client.upload([{"prompt": "5 + 6?", "completion": "11"}])
    message = _refused(client, train, validation_file=other_format)
    assert "validation_file is in prompt_completion format" in message
    batch_file = client.upload(examples(6), purpose="batch")
    assert "purpose 'batch'" in _refused(client, batch_file)
    assert "suffix" in _refused(client, train, suffix="x" * 30)
    # Nothing was stored for any refused request.
    listed = client.jobs.ListFineTuningJobs(
        training_pb2.ListFineTuningJobsRequest(), metadata=client.metadata, timeout=10
    )
    assert not [j for j in listed.jobs if j.training_file == train]
