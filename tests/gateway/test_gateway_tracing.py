"""One request is one trace: the gateway's HTTP span, its gRPC client span, the inference
service's server span and its database queries share a trace id, each a child of the one before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway_stack import poll, start_gateway, start_inference, stop


def test_gateway_and_inference_spans_form_one_trace(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("traced")
    spans_file = home / "spans.jsonl"
    exporter = f"jsonl:{spans_file}"
    address, inference = start_inference(home, LOOMSTACK_INFERENCE_OTEL_EXPORTER=exporter)
    try:
        gateway = start_gateway(
            home, address, "traced-gateway", LOOMSTACK_GATEWAY_OTEL_EXPORTER=exporter
        )
        try:
            assert gateway.http().get("/v1/batches/batch_traced").status_code == 404
            spans = poll(lambda: _spans(spans_file), lambda s: _rpc_spans(s) == 2, timeout=10)
        finally:
            stop(gateway.proc)
    finally:
        stop(inference)

    http = next(s for s in spans if s["name"] == "GET /v1/batches/{batch_id}")
    client, server = sorted(
        (s for s in spans if s["name"].endswith("BatchService/GetBatch")),
        key=lambda s: s["service"],
    )
    assert (client["service"], server["service"]) == ("loomstack-gateway", "loomstack-inference")
    assert http["trace_id"] == client["trace_id"] == server["trace_id"]
    assert client["parent_id"] == http["span_id"]
    assert server["parent_id"] == client["span_id"]
    queries = [
        s for s in spans if s["attributes"].get("db.system") and s["trace_id"] == http["trace_id"]
    ]
    assert queries, "the database query is part of the trace"
    assert all(q["parent_id"] == server["span_id"] for q in queries)


def _spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rpc_spans(spans: list[dict]) -> int:
    return sum(s["name"].endswith("BatchService/GetBatch") for s in spans)
