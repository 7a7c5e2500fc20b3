"""Every failure in OpenAI's error shape with the status of the kit's error table: service
errors (through `from_rpc_error`), request validation, unknown routes, an unreachable service."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from gateway_stack import Gateway, jsonl, request_line, upload_batch_input


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The `error` object of an OpenAI error response, checked for the four standard keys."""
    doc = exc.response.json()
    assert set(doc) == {"error"}
    error: dict[str, Any] = doc["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert isinstance(error["message"], str) and error["message"]
    return error


def create_batch(client: OpenAI, file_id: str, **kwargs: Any) -> Any:
    params: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    params.update(kwargs)
    return client.batches.create(**params)


def test_wrong_purpose(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="assistants")
    error = error_of(exc.value)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "purpose"
    assert "assistants" in error["message"]


def test_unknown_file_id(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.retrieve("file-doesnotexist")
    assert error_of(exc.value)["code"] == "file_not_found"
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.content("file-doesnotexist")
    assert error_of(exc.value)["param"] == "file_id"
    with pytest.raises(openai.NotFoundError) as exc:
        create_batch(client, "file-doesnotexist")
    assert error_of(exc.value)["code"] == "file_not_found"


def test_completion_window_48h(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        create_batch(client, upload_batch_input(client), completion_window="48h")
    error = error_of(exc.value)
    assert error["param"] == "completion_window"
    assert error["code"] == "invalid_completion_window"


def test_metadata_with_17_pairs(client: OpenAI) -> None:
    metadata = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(openai.BadRequestError) as exc:
        create_batch(client, upload_batch_input(client), metadata=metadata)
    error = error_of(exc.value)
    assert error["param"] == "metadata"
    assert "17" in error["message"]


def test_invalid_json_on_line_3(client: OpenAI) -> None:
    content = jsonl([request_line("a"), request_line("b")]) + b'{"custom_id": "c", oops\n'
    content += jsonl([request_line("d")])
    file_id = client.files.create(file=("bad.jsonl", content), purpose="batch").id
    with pytest.raises(openai.BadRequestError) as exc:
        create_batch(client, file_id)
    error = error_of(exc.value)
    assert error["code"] == "invalid_json"
    assert error["line"] == 3
    assert "line 3" in error["message"]


def test_request_validation_names_the_field(gateway: Gateway, client: OpenAI) -> None:
    resp = gateway.http().post("/v1/batches", json={"input_file_id": "file-x", "endpoint": "/x"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["param"], error["type"]) == ("completion_window", "invalid_request_error")

    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.list(limit=0)
    assert error_of(exc.value)["param"] == "limit"

    resp = gateway.http().post(
        "/v1/batches", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert (resp.json()["error"]["code"], resp.json()["error"]["param"]) == ("invalid_json", None)


def test_unknown_route(gateway: Gateway) -> None:
    resp = gateway.http().get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "unknown_url"


def test_unreachable_inference_service_is_503(dead_gateway: Gateway) -> None:
    client = dead_gateway.client()
    with pytest.raises(openai.InternalServerError) as exc:
        client.batches.list()
    assert exc.value.status_code == 503
    error = error_of(exc.value)
    assert error["type"] == "server_error"
    with pytest.raises(openai.InternalServerError) as exc:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert exc.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as exc:
        client.files.content("file-x")
    assert exc.value.status_code == 503

    ready = dead_gateway.http(None).get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["type"] == "server_error"
