"""Plugins in real processes: the curation service and the gateway enable the example plugins
`hello` (a bit of every kind) and `broken` (raises on import), installed by the Makefile.

Shown here: both services start and name the broken one with its reason; `GET /v1/plugins`
lists what each plugin contributes, by type, and an installed but not enabled one as disabled;
the plugin's schema, parser, scale and exporter work in curation; its route is served under
`/v1/plugins/hello` behind the gateway's keys; its result handler sees finished batches at
least once, and a failing delivery is retried, dead-lettered, listed and retried by an admin
(project keys get 403); a required plugin that cannot load stops a service (exit code 2 for
the gateway). Label Studio is not needed: the batches feed is the real inference service's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from curation_support import CurationProcess, finish_batch, input_line, ticket
from gateway_stack import KEY_A, KEY_ADMIN, Gateway, clean_env, start_gateway
from support import InferenceClient, signed, wait_until

from loomstack.curation.v1 import curation_pb2, curation_pb2_grpc

ENABLED = "hello,broken"


@pytest.fixture(scope="module")
def curation(
    inference_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CurationProcess]:
    home = tmp_path_factory.mktemp("curation-plugins")
    process = CurationProcess(
        home,
        {
            "LOOMSTACK_CURATION_INFERENCE_ADDRESS": inference_api.address,
            "LOOMSTACK_CURATION_PLUGINS": ENABLED,
            "LOOMSTACK_CURATION_PLUGIN_MAX_ATTEMPTS": "2",
            "LOOMSTACK_CURATION_RETRY_BASE_SECONDS": "0.2",
            "LOOMSTACK_CURATION_RETRY_MAX_SECONDS": "0.5",
            "LOOMSTACK_CURATION_FEED_WAIT_SECONDS": "1",
            "LOOMSTACK_CURATION_POLL_SECONDS": "0.2",
            "LOOMSTACK_CURATION_OTEL_EXPORTER": f"jsonl:{home / 'spans.jsonl'}",
        },
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway(
    curation: CurationProcess, inference_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = start_gateway(
        tmp_path_factory.mktemp("gateway-plugins"),
        inference_api.address,
        "gateway-plugins",
        LOOMSTACK_GATEWAY_CURATION_ADDRESS=curation.address,
        LOOMSTACK_GATEWAY_PLUGINS=ENABLED,
    )
    try:
        yield gw
    finally:
        gw.proc.terminate()
        gw.proc.wait(15)


def test_plugins_list_names_what_each_contributes_and_why_one_failed(gateway: Gateway) -> None:
    with gateway.http() as http:
        reply = http.get("/v1/plugins")
    assert reply.status_code == 200, reply.text
    plugins = {p["id"]: p for p in reply.json()["data"]}
    hello = plugins["hello"]
    assert hello["state"] == "loaded" and hello["enabled"] and hello["version"] == "0.1.0"
    assert hello["services"] == {
        "curation": {"state": "loaded", "reason": None},
        "gateway": {"state": "loaded", "reason": None},
    }
    assert hello["contributions"] == {
        "schemas": ["hello.greeting"],
        "ratings": ["hello.mood"],
        "parsers": ["hello.upper"],
        "exporters": ["hello.upper_chat"],
        "result_handlers": ["record_batch"],
        "routes": ["/v1/plugins/hello"],
    }
    broken = plugins["broken"]
    assert broken["state"] == "failed" and broken["contributions"] == {}
    for service in ("curation", "gateway"):
        assert broken["services"][service]["reason"] == "RuntimeError: broken on purpose"
    # Installed but not enabled anywhere: listed as disabled (the Aris plugin is installed too).
    for name, plugin in plugins.items():
        if name not in ("hello", "broken"):
            assert plugin["state"] == "disabled" and not plugin["enabled"], name


def test_the_plugins_route_is_served_behind_the_keys(gateway: Gateway) -> None:
    with gateway.http() as http:
        ok = http.get("/v1/plugins/hello/greeting")
    assert ok.status_code == 200 and ok.json() == {"object": "hello.greeting", "message": "hello"}
    with gateway.http(key=None) as http:
        refused = http.get("/v1/plugins/hello/greeting")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    with gateway.http() as http:
        missing = http.get("/v1/plugins/broken/anything")
    assert missing.status_code == 404 and "error" in missing.json()
    document = gateway.http().get("/openapi.json").json()
    assert "/v1/plugins/hello/greeting" in document["paths"]


def test_curation_serves_the_plugins_schema_and_exporter(curation: CurationProcess) -> None:
    channel = grpc.insecure_channel(curation.address)
    schemas = curation_pb2_grpc.SchemaServiceStub(channel)
    listed = schemas.ListSchemas(curation_pb2.ListSchemasRequest(), metadata=signed("default"))
    assert "hello.greeting" in {s.id for s in listed.schemas}
    snapshots = curation_pb2_grpc.SnapshotServiceStub(channel)
    made = snapshots.CreateSnapshot(
        curation_pb2.CreateSnapshotRequest(
            name="greetings",
            format=curation_pb2.SNAPSHOT_FORMAT_SHAREGPT,
            exporter="hello.upper_chat",
            exporter_options={"greeting": "good morning"},
        ),
        metadata=signed("default"),
    )
    assert (made.exporter, dict(made.exporter_options)) == (
        "hello.upper_chat",
        {"greeting": "good morning"},
    )
    assert made.training_examples == 1
    with pytest.raises(grpc.RpcError) as unknown:
        snapshots.CreateSnapshot(
            curation_pb2.CreateSnapshotRequest(name="x", exporter="hello.nope"),
            metadata=signed("default"),
        )
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown exporter 'hello.nope' (exporters: hello.upper_chat)" in unknown.value.details()
    with pytest.raises(grpc.RpcError) as option:
        snapshots.CreateSnapshot(
            curation_pb2.CreateSnapshotRequest(
                name="x", exporter="hello.upper_chat", exporter_options={"colour": "red"}
            ),
            metadata=signed("default"),
        )
    assert "has no option 'colour' (options: greeting)" in option.value.details()
    channel.close()


def test_a_handler_sees_batches_and_a_failing_delivery_is_dead_lettered_then_retried(
    curation: CurationProcess, gateway: Gateway, inference_api: Any
) -> None:
    home = Path(curation.home)
    events_log = home / "hello-events.log"
    inference = InferenceClient(inference_api.address)
    good = inference.create_batch([input_line("t0", ticket(0))])
    (home / "hello-fail").write_text("")
    bad = inference.create_batch([input_line("t0", ticket(0))], metadata={"hello_fail": "true"})
    after = inference.create_batch([input_line("t0", ticket(0))])
    for batch in (good, bad, after):
        finish_batch(Path(inference_api.home), batch.id, set())

    # The failing event holds up neither the handler's later events nor its feed.
    wait_until(
        lambda: (
            {good.id, after.id} <= set(events_log.read_text().split())
            if events_log.exists()
            else False
        ),
        60,
        0.1,
        "the handler's log",
    )

    def dead() -> list[dict[str, Any]] | None:
        with gateway.http(KEY_ADMIN) as http:
            page = http.get("/v1/plugin_deliveries", params={"status": "dead"}).json()
        found = [d for d in page["data"] if d["data"]["batch_id"] == bad.id]
        return found or None

    [delivery] = wait_until(dead, 60, 0.2, "the dead letter")
    assert delivery["plugin"] == "hello" and delivery["handler"] == "record_batch"
    assert delivery["attempts"] == 2 and delivery["event_type"] == "batch.completed"
    assert f"RuntimeError: asked to fail on {bad.id}" in delivery["error"]
    assert bad.id not in events_log.read_text().split()

    with gateway.http(KEY_A) as http:
        refused = http.get("/v1/plugin_deliveries")
        retry_refused = http.post(f"/v1/plugin_deliveries/{delivery['id']}/retry")
    assert refused.status_code == 403 and retry_refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_only"
    with gateway.http(KEY_ADMIN) as http:
        assert http.post("/v1/plugin_deliveries/999999/retry").status_code == 404
        assert http.get("/v1/plugin_deliveries", params={"status": "gone"}).status_code == 400

        (home / "hello-fail").unlink()  # the cause is fixed
        retried = http.post(f"/v1/plugin_deliveries/{delivery['id']}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "retrying" and retried.json()["attempts"] == 0
        wait_until(
            lambda: bad.id in events_log.read_text().split(), 30, 0.1, "the retried delivery"
        )
        wait_until(
            lambda: not http.get("/v1/plugin_deliveries").json()["data"], 30, 0.1, "an empty list"
        )
    # At least once, and the handler is idempotent: each batch is in its log once.
    lines = events_log.read_text().split()
    assert sorted(lines) == sorted(set(lines))
    # Each call is a span naming the plugin, the handler and the event.
    spans = [
        json.loads(line) for line in (home / "spans.jsonl").read_text().splitlines() if line.strip()
    ]
    calls = [s["attributes"] for s in spans if s["name"] == "curation.plugin_handler"]
    assert {(a["loomstack.plugin"], a["loomstack.handler"]) for a in calls} == {
        ("hello", "record_batch")
    }
    assert len([a for a in calls if a["loomstack.feed"] == "batches"]) >= 4  # 3 + the retries


def test_a_required_plugin_that_cannot_load_stops_the_services(
    inference_api: Any, tmp_path: Path
) -> None:
    env = clean_env(
        LOOMSTACK_HOME=str(tmp_path),
        LOOMSTACK_GATEWAY_INFERENCE_ADDRESS=inference_api.address,
        LOOMSTACK_GATEWAY_PORT="0",
        LOOMSTACK_GATEWAY_PLUGINS="hello,broken",
        LOOMSTACK_GATEWAY_PLUGINS_REQUIRED="broken",
    )
    gateway = subprocess.run(
        [sys.executable, "-m", "loomstack_gateway"], env=env, capture_output=True, timeout=60
    )
    assert gateway.returncode == 2
    assert b"required plugin 'broken' could not be loaded: RuntimeError: broken on purpose" in (
        gateway.stderr + gateway.stdout
    )
    env = {
        **os.environ,
        "LOOMSTACK_HOME": str(tmp_path),
        "LOOMSTACK_CURATION_PLUGINS": "hello",
        "LOOMSTACK_CURATION_PLUGINS_REQUIRED": "hello,broken",
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "loomstack_curation", "migrate"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert migrate.returncode == 2
    assert b"required plugins ['broken'] are not enabled" in migrate.stderr + migrate.stdout


def test_the_cli_lists_plugins_and_deliveries(gateway: Gateway) -> None:
    def cli(*args: str, key: str = KEY_ADMIN) -> subprocess.CompletedProcess[str]:
        return gateway.cli("plugins", *args, key=key)

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "hello" in listed.stdout and "RuntimeError: broken on purpose" in listed.stdout
    as_json = cli("list", "--json")
    assert {p["id"] for p in json.loads(as_json.stdout)["data"]} >= {"hello", "broken"}
    assert cli("deliveries", "--status", "dead").returncode == 0
    refused = cli("deliveries", key=KEY_A)
    assert refused.returncode == 2 and "admin" in refused.stderr
    missing = cli("retry", "999999")
    assert missing.returncode == 2 and "no plugin delivery 999999" in missing.stderr
