"""Deleting a fine-tuned model with the openai client (`models.delete`), and registering an
adapter whose source is an uploaded archive: the real gateway over the real inference service."""

from __future__ import annotations

import uuid

import grpc
import openai
import pytest
from support import signed

from gateway_stack import KEY_A, KEY_B, MODEL_NAME, Gateway
from loomstack.inference.v1 import models_pb2, models_pb2_grpc


def _register(address: str, model_id: str, source: str, project: str = "team-a") -> None:
    with grpc.insecure_channel(address) as channel:
        models_pb2_grpc.ModelServiceStub(channel).CreateModel(
            models_pb2.CreateModelRequest(model_id=model_id, parent=MODEL_NAME, source=source),
            metadata=signed(project, "training"),
            timeout=30,
        )


def test_a_project_deletes_its_own_fine_tuned_model(
    gateway: Gateway, inference_address: str
) -> None:
    name = f"ft:{MODEL_NAME}:del:{uuid.uuid4().hex[:8]}"
    _register(inference_address, name, "/adapters/somewhere")
    owner, other = gateway.client(KEY_A), gateway.client(KEY_B)
    assert owner.models.retrieve(name).owned_by == "team-a"

    # Another project is told what an unknown id is told: nothing confirms the model exists.
    with pytest.raises(openai.NotFoundError) as denied:
        other.models.delete(name)
    unknown = f"ft:{MODEL_NAME}:del:{uuid.uuid4().hex[:8]}"
    with pytest.raises(openai.NotFoundError) as missing:
        other.models.delete(unknown)
    assert denied.value.response.json()["error"]["message"] == missing.value.response.json()[
        "error"
    ]["message"].replace(unknown, name)
    with pytest.raises(openai.BadRequestError) as base:
        owner.models.delete(MODEL_NAME)
    assert "base model" in base.value.response.json()["error"]["message"]

    deleted = owner.models.delete(name)
    assert (deleted.id, deleted.deleted, deleted.object) == (name, True, "model")
    assert name not in {m.id for m in owner.models.list().data}
    with pytest.raises(openai.NotFoundError):
        owner.models.delete(name)


def test_an_adapter_source_file_must_be_an_adapter_archive(
    gateway: Gateway, inference_address: str
) -> None:
    batch_file = gateway.client(KEY_A).files.create(
        file=("not-an-adapter.jsonl", b'{"custom_id": "x"}\n'), purpose="batch"
    )
    with pytest.raises(grpc.RpcError) as exc:
        _register(inference_address, f"ft:{MODEL_NAME}:bad:x", batch_file.id)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose 'batch'" in (exc.value.details() or "")
    with pytest.raises(grpc.RpcError) as missing:
        _register(inference_address, f"ft:{MODEL_NAME}:bad:y", "file-doesnotexist")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
