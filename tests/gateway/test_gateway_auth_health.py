"""API keys on every route but health, metrics and docs; readiness; Prometheus metrics."""

from __future__ import annotations

import openai
import pytest

from gateway_stack import Gateway


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files"),
        ("POST", "/v1/files"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/batches/batch_x"),
        ("POST", "/v1/batches/batch_x/cancel"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/unknown"),
    ],
)
def test_missing_key_is_401(gateway: Gateway, method: str, path: str) -> None:
    resp = gateway.http(None).request(method, path)
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert resp.headers["www-authenticate"] == "Bearer"


def test_wrong_key_is_401(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.client("sk-wrong").models.list()
    assert exc.value.response.json()["error"]["code"] == "invalid_api_key"
    resp = gateway.http(None).get("/v1/models", headers={"authorization": "Basic abc"})
    assert resp.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
def test_open_routes_need_no_key(gateway: Gateway, path: str) -> None:
    assert gateway.http(None).get(path).status_code == 200


def test_readyz(gateway: Gateway) -> None:
    assert gateway.http(None).get("/readyz").json() == {"status": "ready"}


def test_openapi_documents_the_bearer_key(gateway: Gateway) -> None:
    schema = gateway.http(None).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/batches/{batch_id}"]["get"]["security"] == [{"bearer": []}]


def test_metrics_count_by_route_template_and_status(gateway: Gateway) -> None:
    http = gateway.http()
    http.get("/v1/batches/batch_metrics_probe")
    http.get("/v1/models")
    text = gateway.http(None).get("/metrics").text
    assert (
        'loomstack_gateway_requests_total{method="GET",route="/v1/batches/{batch_id}",'
        'status="404"}' in text
    )
    assert 'loomstack_gateway_requests_total{method="GET",route="/v1/models",status="200"}' in text
    assert "loomstack_gateway_request_duration_seconds_bucket" in text
    assert "batch_metrics_probe" not in text
