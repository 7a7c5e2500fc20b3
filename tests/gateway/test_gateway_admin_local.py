"""/admin/services on the embedded default: the real local stack (`loomstack up`'s processes).

The stack is started by the CLI's own `LocalStack` (inference service in the api role, no vLLM
engine, and the gateway), so the admin backend reads the pid and port files exactly as the CLI
writes them. A restart must bring the inference service back on the same port, so the running
gateway keeps reaching it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loomstack_cli.local_stack import INFERENCE, LocalStack

ADMIN_KEY, TEAM_KEY = "sk-local-admin", "sk-local-team"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, str]]:
    home = tmp_path_factory.mktemp("local-stack")
    model_dir = home / "model"
    model_dir.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOOMSTACK_GATEWAY_API_KEYS", f"{ADMIN_KEY}:*")
        env.setenv("LOOMSTACK_INFERENCE_METRICS_PORT", "0")
        env.delenv("LOOMSTACK_GATEWAY_ADMIN_BACKEND", raising=False)
        local = LocalStack(home)
        url = local.start(
            host="127.0.0.1",
            port=0,
            roles="api",
            model_path=model_dir,
            api_key=TEAM_KEY,
            timeout=120,
        )
    try:
        yield local, url
    finally:
        local.stop(grace=15)


def call(method: str, url: str, key: str = ADMIN_KEY, **kw: object) -> httpx.Response:
    return httpx.request(method, url, headers={"Authorization": f"Bearer {key}"}, timeout=180, **kw)  # type: ignore[arg-type]


def test_local_stack_reports_its_processes(stack: tuple[LocalStack, str]) -> None:
    local, url = stack
    resp = call("GET", f"{url}/admin/services")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["backend"] == "local" and Path(body["home"]) == local.home
    services = {s["name"]: s for s in body["data"]}
    assert set(services) == {"gateway", "inference", "curation", "training"}
    inference = services["inference"]
    assert inference["replicas"] == {"desired": 1, "ready": 1, "updated": 1, "available": 1}
    process = inference["pods"][0]
    assert process["pid"] == local.state(INFERENCE).pid and process["running"]
    assert process["port"] == int(local.port_file(INFERENCE).read_text())
    assert process["log"] == str(local.log_file(INFERENCE))
    assert services["gateway"]["pods"][0]["ready"] is True


def test_local_stack_admin_keys_only(stack: tuple[LocalStack, str]) -> None:
    _, url = stack
    resp = call("GET", f"{url}/admin/services", key=TEAM_KEY)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_only"


def test_local_stack_restarts_the_inference_process(stack: tuple[LocalStack, str]) -> None:
    """SIGTERM, then the same command line again on the same port; the gateway stays connected."""
    local, url = stack
    before = local.state(INFERENCE).pid
    port = local.port_file(INFERENCE).read_text()
    resp = call("POST", f"{url}/admin/services/inference/restart")
    assert resp.status_code == 200, resp.text
    after = local.state(INFERENCE)
    assert after.running and after.pid != before
    assert resp.json()["service"]["pods"][0]["pid"] == after.pid
    assert local.port_file(INFERENCE).read_text() == port
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the gateway never reached the restarted service"
        time.sleep(0.2)
    listed = {s["name"]: s for s in call("GET", f"{url}/admin/services").json()["data"]}
    assert listed["inference"]["restarts"] == 1
    assert listed["inference"]["replicas"]["ready"] == 1


def test_local_stack_refuses_what_it_cannot_do(stack: tuple[LocalStack, str]) -> None:
    _, url = stack
    resp = call("POST", f"{url}/admin/services/gateway/restart")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "cannot_restart_gateway"
    resp = call("POST", f"{url}/admin/services/inference/scale", json={"replicas": 2})
    assert resp.status_code == 400
    assert "scaling needs Kubernetes" in resp.json()["error"]["message"]
    resp = call("POST", f"{url}/admin/services/labelstudio/restart")
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == (
        "no local service named 'labelstudio' (known: curation, gateway, inference, training)"
    )
