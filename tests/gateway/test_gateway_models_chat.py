"""Models through the gateway, and chat on an api-only service (no engine): a clean 503."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from gateway_stack import MODEL_NAME, Gateway


def test_models_list_and_retrieve(client: OpenAI) -> None:
    models = client.models.list()
    ours = next(m for m in models.data if m.id == MODEL_NAME)
    assert ours.object == "model"
    assert ours.owned_by == "system"
    assert ours.created > 0
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.response.json()["error"]["code"] == "model_not_found"


def _assert_engine_unavailable(exc: openai.APIStatusError) -> None:
    assert exc.status_code == 503
    error = exc.response.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "engine_not_ready"
    assert error["message"]


def test_chat_without_engine_is_503(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model=MODEL_NAME, messages=messages)  # type: ignore[arg-type]
    _assert_engine_unavailable(exc.value)


def test_streamed_chat_without_engine_is_503(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model=MODEL_NAME, messages=messages, stream=True)  # type: ignore[arg-type]
    _assert_engine_unavailable(exc.value)


def test_chat_body_must_be_json(gateway: Gateway) -> None:
    resp = gateway.http().post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
