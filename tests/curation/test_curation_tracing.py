"""A curation import is one trace across services: the curation service's import span, its
gRPC client calls that read the batch's files, and the inference service's server spans for
them share one trace id, each a child of the one before (real processes, the session's Label
Studio, spans exported as JSON lines)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from curation_support import CurationProcess, finish_batch, input_line, ticket
from support import InferenceClient, InferenceProcess, signed, wait_until

from loomstack.curation.v1 import curation_pb2, curation_pb2_grpc
from loomstack_curation.labelstudio_server import LabelStudioServer

pytestmark = pytest.mark.labelstudio

DOWNLOAD = "FileService/DownloadFileContent"


@pytest.fixture()
def traced(
    label_studio_server: LabelStudioServer, tmp_path: Path
) -> Iterator[tuple[InferenceProcess, CurationProcess, Path]]:
    spans = tmp_path / "spans.jsonl"
    inference = InferenceProcess(
        tmp_path / "inference",
        roles="api",
        name="inference-traced",
        env={"LOOMSTACK_INFERENCE_OTEL_EXPORTER": f"jsonl:{spans}"},
    )
    (tmp_path / "inference").mkdir()
    inference.start().wait_ready(120)
    try:
        curation = CurationProcess(
            tmp_path / "curation",
            {
                "LOOMSTACK_CURATION_INFERENCE_ADDRESS": inference.address,
                "LOOMSTACK_CURATION_LABEL_STUDIO_URL": label_studio_server.url,
                "LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN": label_studio_server.token,
                "LOOMSTACK_CURATION_LABEL_STUDIO_PROJECT_PREFIX": f"tr-{uuid.uuid4().hex[:6]} ",
                "LOOMSTACK_CURATION_RECONCILE_SECONDS": "3600",
                "LOOMSTACK_CURATION_OTEL_EXPORTER": f"jsonl:{spans}",
            },
        ).start()
        try:
            yield inference, curation, spans
        finally:
            curation.stop()
    finally:
        inference.terminate()


def test_a_curation_import_is_one_trace_across_services(
    traced: tuple[InferenceProcess, CurationProcess, Path],
) -> None:
    inference, curation, spans_file = traced
    batch = InferenceClient(inference.address).create_batch(
        [input_line(f"t{i}", ticket(i)) for i in range(4)],
        metadata={"schema_type": "classify_ticket"},
    )
    finish_batch(Path(inference.home), batch.id, set())
    imports = curation_pb2_grpc.ImportServiceStub(grpc.insecure_channel(curation.address))

    def completed() -> bool:
        try:
            reply = imports.GetImport(
                curation_pb2.GetImportRequest(batch_id=batch.id), metadata=signed("default")
            )
        except grpc.RpcError:
            return False
        return reply.status == curation_pb2.IMPORT_STATUS_COMPLETED

    wait_until(completed, 60, 0.2, "the import")
    spans = wait_until(
        lambda: (s := _spans(spans_file)) and _downloads(s, "loomstack-inference") >= 2 and s,
        10,
        0.2,
        "the inference service's spans",
    )
    root = next(
        s
        for s in spans
        if s["name"] == "curation.import" and s["attributes"]["loomstack.batch_id"] == batch.id
    )
    assert root["service"] == "loomstack-curation" and root["parent_id"] is None
    trace = [s for s in spans if s["trace_id"] == root["trace_id"]]
    clients = [s for s in trace if s["name"].endswith(DOWNLOAD) and s["service"] == root["service"]]
    servers = [s for s in trace if s["name"].endswith(DOWNLOAD) and s["service"] != root["service"]]
    # The batch's input and output files, each read once by the import.
    assert len(clients) == 2 and len(servers) == 2, [s["name"] for s in trace]
    assert all(c["parent_id"] == root["span_id"] for c in clients)
    assert {s["parent_id"] for s in servers} == {c["span_id"] for c in clients}
    assert {s["service"] for s in servers} == {"loomstack-inference"}


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _downloads(spans: list[dict[str, Any]], service: str) -> int:
    return sum(s["name"].endswith(DOWNLOAD) and s["service"] == service for s in spans)
