"""/admin/services on Kubernetes, against a STAND-IN Kubernetes API server (no cluster here).

No Kubernetes API server can run on our machines, so `StandInKubernetesApi` plays one on
loopback: it speaks the real Kubernetes REST paths and JSON (Deployments, Pods, Events, Status
errors), checks the bearer token, and authorizes every request against the RBAC rules of the
gateway Role that the real chart renders (`helm template`), so the admin code is shown to need
nothing beyond that Role. The gateway reaches it through the official `kubernetes` client with a
kubeconfig (`LOOMSTACK_GATEWAY_ADMIN_KUBECONFIG`); in a cluster the same code uses the in-cluster
ServiceAccount. The gateway app is the real one, called in-process.
"""

from __future__ import annotations

import copy
import json
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import helm_chart
import pytest
import yaml
from fastapi.testclient import TestClient

from loomstack_gateway.app import create_app
from loomstack_gateway.settings import GatewaySettings

NAMESPACE = "loomstack"
TOKEN = "stand-in-service-account-token"
USER = f"system:serviceaccount:{NAMESPACE}:loomstack-gateway"
ADMIN_KEY, TEAM_KEY = "sk-admin", "sk-team"
SELECTOR = "app.kubernetes.io/instance=loomstack,app.kubernetes.io/part-of=loomstack"
Json = dict[str, Any]
Rules = set[tuple[str, str, str]]  # (api group, resource, verb)


# -- the chart's gateway Role ------------------------------------------------------------------


def chart_gateway_rules(values: Json | None = None) -> Rules:
    """(group, resource, verb) the chart's gateway Role grants, from the real `helm template`."""
    helm = helm_chart.ensure_helm()
    with tempfile.TemporaryDirectory(prefix="admin-values-") as tmp:
        path = None
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
        objects = helm_chart.render(helm, path)
    role = next(
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-gateway")
    )
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# -- Kubernetes objects as the API serves them -------------------------------------------------


def labels(component: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "loomstack",
        "app.kubernetes.io/instance": "loomstack",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "loomstack",
        "app.kubernetes.io/managed-by": "Helm",
        **extra,
    }


def deployment(name: str, component: str, replicas: int, ready: int, **kw: Any) -> Json:
    pod_labels = labels(component, **kw.get("extra_labels", {}))
    selector = {k: v for k, v in pod_labels.items() if k != "app.kubernetes.io/managed-by"}
    resources: Json = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    if kw.get("gpus"):
        resources["limits"].update(kw["gpus"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "resourceVersion": "1000",
            "generation": 1,
            "creationTimestamp": "2026-11-30T10:00:00Z",
            "labels": kw.get("object_labels", pod_labels),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "containers": [
                        {
                            "name": component,
                            "image": f"ghcr.io/loomstack/{component}:0.1.0",
                            "resources": resources,
                        }
                    ]
                },
            },
            "strategy": {"type": "RollingUpdate"},
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if ready else "False",
                    "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability."
                    if ready
                    else "Deployment does not have minimum availability.",
                    "lastUpdateTime": "2026-11-30T10:05:00Z",
                    "lastTransitionTime": "2026-11-30T10:05:00Z",
                },
            ],
        },
    }


def pod(
    owner: Json,
    suffix: str,
    *,
    ready: bool,
    restarts: int = 0,
    node: str = "gpu-node-1",
    crashed: bool = False,
) -> Json:
    template = owner["spec"]["template"]
    container = template["spec"]["containers"][0]
    status: Json = {
        "name": container["name"],
        "image": container["image"],
        "imageID": f"{container['image']}@sha256:{'0' * 64}",
        "ready": ready,
        "started": True,
        "restartCount": restarts,
        "state": {"running": {"startedAt": "2026-11-30T10:01:00Z"}},
    }
    if crashed:
        status["state"] = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": "back-off 5m0s restarting failed container",
            }
        }
        status["lastState"] = {
            "terminated": {
                "exitCode": 137,
                "reason": "OOMKilled",
                "startedAt": "2026-11-30T10:02:00Z",
                "finishedAt": "2026-11-30T10:03:00Z",
            }
        }
    condition = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "lastTransitionTime": "2026-11-30T10:01:30Z",
    }
    if not ready:
        condition.update(reason="ContainersNotReady", message="containers with unready status")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{owner['metadata']['name']}-{suffix}",
            "namespace": NAMESPACE,
            "uid": f"uid-pod-{suffix}",
            "labels": {**template["metadata"]["labels"], "pod-template-hash": "6d4cf56db6"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{owner['metadata']['name']}-6d4cf56db6",
                    "uid": "uid-rs",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"nodeName": node, "containers": copy.deepcopy(template["spec"]["containers"])},
        "status": {
            "phase": "Running",
            "startTime": "2026-11-30T10:00:30Z",
            "conditions": [condition],
            "containerStatuses": [status],
        },
    }


def warning_event(pod_name: str, reason: str, message: str, when: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{pod_name}.{when[-8:-1].replace(':', '')}", "namespace": NAMESPACE},
        "involvedObject": {
            "kind": "Pod",
            "namespace": NAMESPACE,
            "name": pod_name,
            "apiVersion": "v1",
            "fieldPath": "spec.containers{engine}",
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
        "count": 3,
        "firstTimestamp": "2026-11-30T10:01:00Z",
        "lastTimestamp": when,
        "source": {"component": "kubelet", "host": "gpu-node-1"},
    }


def cluster_objects() -> tuple[list[Json], list[Json], list[Json]]:
    gateway = deployment("loomstack-gateway", "gateway", 2, 2)
    api = deployment("loomstack-inference-api", "inference-api", 2, 2)
    engine = deployment(
        "loomstack-engine-llama-8b",
        "inference-engine",
        2,
        1,
        extra_labels={"loomstack.io/model": "llama-8b"},
        gpus={"nvidia.com/gpu": "1"},
    )
    # Someone else's Deployment in the same namespace: /admin must not see or touch it.
    other = deployment("billing", "web", 1, 1, object_labels={"app": "billing"})
    other["spec"]["template"]["metadata"]["labels"] = {"app": "billing"}
    other["spec"]["selector"]["matchLabels"] = {"app": "billing"}
    pods = [
        pod(gateway, "a1", ready=True, node="cpu-node-1"),
        pod(gateway, "a2", ready=True, node="cpu-node-2"),
        pod(api, "b1", ready=True, node="cpu-node-1"),
        pod(api, "b2", ready=True, restarts=1, node="cpu-node-2"),
        pod(engine, "c1", ready=True, node="gpu-node-1"),
        pod(engine, "c2", ready=False, restarts=4, node="gpu-node-2", crashed=True),
    ]
    events = [
        warning_event(
            "loomstack-engine-llama-8b-c2",
            "Unhealthy",
            'Startup probe failed: service unhealthy (responded with "NOT_SERVING")',
            "2026-11-30T10:02:50Z",
        ),
        warning_event(
            "loomstack-engine-llama-8b-c2",
            "BackOff",
            "Back-off restarting failed container engine",
            "2026-11-30T10:03:10Z",
        ),
        warning_event("billing-x", "BackOff", "not ours", "2026-11-30T10:03:10Z"),
    ]
    return [gateway, api, engine, other], pods, events


# -- the stand-in API server -------------------------------------------------------------------


def _status(code: int, reason: str, message: str, details: Json | None = None) -> Json:
    """A Kubernetes `Status` object, as every API error body is."""
    body: Json = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _selected(obj: Json, selector: str) -> bool:
    obj_labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if obj_labels.get(key) != value:
            return False
    return True


@dataclass
class StandInKubernetesApi:
    """A stand-in Kubernetes API server on loopback (see the module docstring)."""

    rules: Rules
    deployments: dict[str, Json] = field(default_factory=dict)
    pods: list[Json] = field(default_factory=list)
    events: list[Json] = field(default_factory=list)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, content type
    forbidden: list[str] = field(default_factory=list)

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Json]:
        url = urlparse(raw_path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path, headers.get("Content-Type", "")))
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token != TOKEN:  # the scheme is case-insensitive
            return 401, _status(401, "Unauthorized", "Unauthorized")
        parts = url.path.strip("/").split("/")
        # /apis/apps/v1/namespaces/{ns}/deployments[/{name}] | /api/v1/namespaces/{ns}/{pods,events}
        if parts[:3] == ["apis", "apps", "v1"] and parts[5:6] == ["deployments"]:
            group, rest = "apps", parts[3:]
        elif parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        else:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        namespace, resource, name = rest[1], rest[2], rest[3] if len(rest) > 3 else None
        verb = {"GET": "get" if name else "list", "PATCH": "patch"}.get(method, method.lower())
        if (group, resource, verb) not in self.rules:
            kind = f"{resource}.{group}" if group else resource
            subject = f'{kind} "{name}" is forbidden' if name else f"{kind} is forbidden"
            message = (
                f'{subject}: User "{USER}" cannot {verb} resource "{resource}" in API group '
                f'"{group}" in the namespace "{namespace}"'
            )
            self.forbidden.append(message)
            details = {"kind": resource, **({"name": name} if name else {})}
            if group:
                details["group"] = group
            return 403, _status(403, "Forbidden", message, details)
        if resource == "deployments":
            return self._deployments(method, name, query, body)
        items = self.pods if resource == "pods" else self.events
        if resource == "pods":
            items = [p for p in items if _selected(p, query.get("labelSelector", ""))]
        elif query.get("fieldSelector") == "type=Warning":
            items = [e for e in items if e["type"] == "Warning"]
        kind = "PodList" if resource == "pods" else "EventList"
        return 200, {
            "kind": kind,
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "2000"},
            "items": items,
        }

    def _deployments(
        self, method: str, name: str | None, query: dict[str, str], body: bytes
    ) -> tuple[int, Json]:
        if name is None:
            selector = query.get("labelSelector", "")
            items = [d for d in self.deployments.values() if _selected(d, selector)]
            return 200, {
                "kind": "DeploymentList",
                "apiVersion": "apps/v1",
                "metadata": {"resourceVersion": "2000"},
                "items": items,
            }
        if name not in self.deployments:
            return 404, _status(
                404,
                "NotFound",
                f'deployments.apps "{name}" not found',
                {"name": name, "group": "apps", "kind": "deployments"},
            )
        found = self.deployments[name]
        if method == "PATCH":
            _merge(found, json.loads(body))
            found["metadata"]["generation"] += 1
            found["metadata"]["resourceVersion"] = str(
                int(found["metadata"]["resourceVersion"]) + 1
            )
        return 200, found


def _merge(target: Json, patch: Json) -> None:
    """A strategic merge patch of maps (all our patches are maps of scalars)."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def serve_stand_in(
    api: StandInKubernetesApi, tls: ssl.SSLContext | None = None
) -> tuple[ThreadingHTTPServer, str]:
    """Serves the stand-in on a loopback port (HTTPS with `tls`, as a real API server does)."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, body = api.handle(
                self.command, self.path, self.headers, self.rfile.read(length)
            )
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer()

        def do_PATCH(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if tls else "http"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "stand-in",
                "clusters": [{"name": "stand-in", "cluster": {"server": server}}],
                "users": [{"name": "gateway", "user": {"token": TOKEN}}],
                "contexts": [
                    {
                        "name": "stand-in",
                        "context": {
                            "cluster": "stand-in",
                            "user": "gateway",
                            "namespace": NAMESPACE,
                        },
                    }
                ],
            }
        )
    )
    return path


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_rules() -> Rules:
    return chart_gateway_rules()


Admin = Callable[..., tuple[TestClient, StandInKubernetesApi]]


@pytest.fixture
def admin(tmp_path: Path, default_rules: Rules) -> Iterator[Admin]:
    """Starts a stand-in API server with the given rules and a gateway app in front of it."""
    servers: list[ThreadingHTTPServer] = []
    clients: list[TestClient] = []

    def start(
        rules: Rules | None = None, **settings: Any
    ) -> tuple[TestClient, StandInKubernetesApi]:
        deployments, pods, events = cluster_objects()
        api = StandInKubernetesApi(
            rules if rules is not None else default_rules,
            {d["metadata"]["name"]: d for d in deployments},
            pods,
            events,
        )
        server, url = serve_stand_in(api)
        servers.append(server)
        config = kubeconfig(tmp_path / f"kubeconfig-{len(servers)}", url)
        gateway_settings = GatewaySettings(
            api_keys=f"{ADMIN_KEY}:*,{TEAM_KEY}:team-a",
            admin_backend="kubernetes",
            admin_namespace=NAMESPACE,
            admin_label_selector=SELECTOR,
            admin_kubeconfig=str(config),
            home=tmp_path,
            **settings,
        )
        client = TestClient(create_app(gateway_settings))
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        clients.append(client)
        return client, api

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.shutdown()
        server.server_close()


# -- the tests ---------------------------------------------------------------------------------


def test_standin_kubernetes_lists_each_component(admin: Admin) -> None:
    """Replicas, restarts, last failures and GPUs of every Loomstack Deployment, nothing else."""
    client, api = admin()
    resp = client.get("/admin/services")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["backend"] == "kubernetes" and body["namespace"] == NAMESPACE
    services = {s["name"]: s for s in body["data"]}
    assert set(services) == {
        "loomstack-gateway",
        "loomstack-inference-api",
        "loomstack-engine-llama-8b",
    }
    gateway = services["loomstack-gateway"]
    assert gateway["replicas"] == {"desired": 2, "ready": 2, "updated": 2, "available": 2}
    assert gateway["gpus"] is None and gateway["restarts"] == 0
    assert services["loomstack-inference-api"]["restarts"] == 1

    engine = services["loomstack-engine-llama-8b"]
    assert engine["component"] == "inference-engine" and engine["model"] == "llama-8b"
    assert engine["replicas"]["desired"] == 2 and engine["replicas"]["ready"] == 1
    assert engine["restarts"] == 4
    assert engine["gpus"] == {
        "per_replica": {"nvidia.com/gpu": 1},
        "allocated": {"nvidia.com/gpu": 2},
        "nodes": ["gpu-node-1", "gpu-node-2"],
    }
    assert engine["conditions"] == []  # one of two ready is still "Available"
    broken = next(p for p in engine["pods"] if not p["ready"])
    assert broken["last_failure"] == {
        "container": "inference-engine",
        "reason": "OOMKilled",
        "exit_code": 137,
        "finished_at": "2026-11-30T10:03:00Z",
    }
    assert broken["waiting"]["reason"] == "CrashLoopBackOff"
    assert broken["not_ready"][0]["message"] == "containers with unready status"
    # The chart's default Role has no events: the gateway does not ask for them.
    assert engine["events"] is None
    assert not api.forbidden
    assert not any("/events" in path for _, path, _ in api.requests)


def test_standin_kubernetes_events_with_read_events(admin: Admin) -> None:
    """With gateway.admin.readEvents the chart grants `list` on events and probe failures show."""
    client, api = admin(
        chart_gateway_rules({"gateway": {"admin": {"readEvents": True}}}), admin_events=True
    )
    body = client.get("/admin/services").json()
    engine = next(s for s in body["data"] if s["name"] == "loomstack-engine-llama-8b")
    assert [e["reason"] for e in engine["events"]] == ["BackOff", "Unhealthy"]
    assert engine["events"][1]["message"].startswith("Startup probe failed")
    assert engine["events"][1]["object"] == "Pod/loomstack-engine-llama-8b-c2"
    gateway = next(s for s in body["data"] if s["name"] == "loomstack-gateway")
    assert gateway["events"] == []
    assert not api.forbidden


def test_standin_kubernetes_events_without_rbac_is_a_clear_403(admin: Admin) -> None:
    """Asking for events under the default Role: the API's 403 reaches the caller, explained."""
    client, _ = admin(admin_events=True)
    resp = client.get("/admin/services")
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "kubernetes_forbidden"
    assert 'cannot list resource "events"' in error["message"]
    assert "RBAC" in error["message"]


def test_standin_kubernetes_rollout_restart(admin: Admin) -> None:
    """A restart patches the pod template's restartedAt annotation, as `kubectl rollout restart`."""
    client, api = admin()
    resp = client.post("/admin/services/loomstack-engine-llama-8b/restart")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    stored = api.deployments["loomstack-engine-llama-8b"]
    annotations = stored["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/restartedAt"] == body["restarted_at"]
    assert body["service"]["restarted_at"] == body["restarted_at"]
    assert stored["metadata"]["generation"] == 2
    patches = [r for r in api.requests if r[0] == "PATCH"]
    assert patches == [
        (
            "PATCH",
            f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/loomstack-engine-llama-8b",
            "application/strategic-merge-patch+json",
        )
    ]
    assert not api.forbidden


def test_standin_kubernetes_scale(admin: Admin) -> None:
    client, api = admin()
    resp = client.post("/admin/services/loomstack-inference-api/scale", json={"replicas": 5})
    assert resp.status_code == 200, resp.text
    assert resp.json()["service"]["replicas"]["desired"] == 5
    assert api.deployments["loomstack-inference-api"]["spec"]["replicas"] == 5

    for bad in (-1, 33):
        resp = client.post("/admin/services/loomstack-inference-api/scale", json={"replicas": bad})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "replicas"
    assert api.deployments["loomstack-inference-api"]["spec"]["replicas"] == 5


def test_standin_kubernetes_curation_scales_to_one_replica_at_most(admin: Admin) -> None:
    """The curation service owns its import queue: more than one replica is refused, and
    nothing is patched."""
    client, api = admin()
    api.deployments["loomstack-curation"] = deployment("loomstack-curation", "curation", 1, 1)
    resp = client.post("/admin/services/loomstack-curation/scale", json={"replicas": 2})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "single_replica_service" and error["param"] == "replicas"
    assert api.deployments["loomstack-curation"]["spec"]["replicas"] == 1
    resp = client.post("/admin/services/loomstack-curation/scale", json={"replicas": 0})
    assert resp.status_code == 200, resp.text
    assert api.deployments["loomstack-curation"]["spec"]["replicas"] == 0


def test_standin_kubernetes_unknown_deployment_is_404(admin: Admin) -> None:
    client, _ = admin()
    resp = client.post("/admin/services/loomstack-engine-nope/restart")
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "service_not_found"
    assert 'deployments.apps "loomstack-engine-nope" not found' in error["message"]
    assert NAMESPACE in error["message"]


def test_standin_kubernetes_other_deployments_are_out_of_reach(admin: Admin) -> None:
    """The Role may patch any Deployment of the namespace; /admin touches only Loomstack's."""
    client, api = admin()
    resp = client.post("/admin/services/billing/scale", json={"replicas": 0})
    assert resp.status_code == 404
    assert "no Loomstack service named 'billing'" in resp.json()["error"]["message"]
    assert api.deployments["billing"]["spec"]["replicas"] == 1
    assert not [r for r in api.requests if r[0] == "PATCH"]


def test_standin_kubernetes_rbac_403_is_clear(admin: Admin, default_rules: Rules) -> None:
    """A Role without `patch` (say, a hand-edited one): the restart fails with the API's reason."""
    client, api = admin({r for r in default_rules if r[2] != "patch"})
    resp = client.post("/admin/services/loomstack-gateway/restart")
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "kubernetes_forbidden"
    assert error["message"].startswith("the gateway's ServiceAccount may not restart deployment")
    assert (
        f'User "{USER}" cannot patch resource "deployments" in API group "apps"' in error["message"]
    )
    assert "annotations" not in api.deployments["loomstack-gateway"]["spec"]["template"]["metadata"]


def test_standin_kubernetes_admin_keys_only(admin: Admin) -> None:
    client, api = admin()
    resp = client.get("/admin/services", headers={"Authorization": f"Bearer {TEAM_KEY}"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_only"
    resp = client.post(
        "/admin/services/loomstack-gateway/restart", headers={"Authorization": f"Bearer {TEAM_KEY}"}
    )
    assert resp.status_code == 403
    resp = client.get("/admin/services", headers={"Authorization": ""})
    assert resp.status_code == 401
    assert not api.requests, "no Kubernetes call for a caller who may not use /admin"


def test_standin_kubernetes_unreachable_api_is_503(tmp_path: Path) -> None:
    """An API server that does not answer: 503, not a hang or a 500."""
    dead = kubeconfig(tmp_path / "dead", "http://127.0.0.1:9")
    settings = GatewaySettings(
        api_keys=f"{ADMIN_KEY}:*",
        admin_backend="kubernetes",
        admin_namespace=NAMESPACE,
        admin_kubeconfig=str(dead),
        home=tmp_path,
    )
    with TestClient(create_app(settings)) as dead_client:
        resp = dead_client.get("/admin/services", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "kubernetes_unavailable"
    # The API server's address stays in the gateway's log.
    assert "127.0.0.1" not in resp.text and ":9" not in resp.text


def test_admin_backend_none_says_why(tmp_path: Path) -> None:
    """The chart's gateway.admin.enabled=false: the routes answer with the reason, no API calls."""
    settings = GatewaySettings(api_keys=f"{ADMIN_KEY}:*", admin_backend="none", home=tmp_path)
    with TestClient(create_app(settings)) as client:
        resp = client.get("/admin/services", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "admin_disabled"


def test_kubernetes_backend_outside_a_cluster_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ServiceAccount and no kubeconfig: a 503 that names both ways to configure it."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = GatewaySettings(api_keys=f"{ADMIN_KEY}:*", admin_backend="kubernetes", home=tmp_path)
    with TestClient(create_app(settings)) as client:
        resp = client.get("/admin/services", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "kubernetes_unconfigured"
    assert "LOOMSTACK_GATEWAY_ADMIN_KUBECONFIG" in error["message"]


def test_standin_kubernetes_reads_the_charts_own_deployments(tmp_path: Path) -> None:
    """The Deployments `helm template` renders for several GPU models (MIG included) are listed
    with the GPUs their values ask for, found by the label selector the chart gives the gateway."""
    helm = helm_chart.ensure_helm()
    scenario = helm_chart.scenarios()["03-multi-model-mig"]
    objects = helm_chart.render(helm, scenario)
    rendered = [o for o in objects if o["kind"] == "Deployment"]
    gateway = next(d for d in rendered if d["metadata"]["name"] == "loomstack-gateway")
    env = {
        e["name"]: e.get("value")
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    pods = []
    for d in rendered:
        d["metadata"]["namespace"] = NAMESPACE
        for container in d["spec"]["template"]["spec"]["containers"]:
            _as_api_server_serves(container)
        replicas = d["spec"].get("replicas", 1)
        d["status"] = {
            "replicas": replicas,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        }
        template = d["spec"]["template"]
        for i in range(replicas):
            pods.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{d['metadata']['name']}-{i}",
                        "namespace": NAMESPACE,
                        "labels": template["metadata"]["labels"],
                    },
                    "spec": {**copy.deepcopy(template["spec"]), "nodeName": f"node-{i}"},
                    "status": {
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "containerStatuses": [
                            {
                                "name": c["name"],
                                "image": c["image"],
                                "imageID": "",
                                "ready": True,
                                "restartCount": 0,
                                "state": {"running": {}},
                            }
                            for c in template["spec"]["containers"]
                        ],
                    },
                }
            )
    api = StandInKubernetesApi(
        chart_gateway_rules(), {d["metadata"]["name"]: d for d in rendered}, pods
    )
    server, url = serve_stand_in(api)
    try:
        settings = GatewaySettings(
            api_keys=f"{ADMIN_KEY}:*",
            admin_backend=env["LOOMSTACK_GATEWAY_ADMIN_BACKEND"],
            admin_namespace=NAMESPACE,
            admin_label_selector=env["LOOMSTACK_GATEWAY_ADMIN_LABEL_SELECTOR"],
            admin_kubeconfig=str(kubeconfig(tmp_path / "kubeconfig", url)),
            home=tmp_path,
        )
        with TestClient(create_app(settings)) as client:
            resp = client.get("/admin/services", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    finally:
        server.shutdown()
        server.server_close()
    assert resp.status_code == 200, resp.text
    services = {s["name"]: s for s in resp.json()["data"]}
    assert set(services) == {d["metadata"]["name"] for d in rendered}
    for engine in helm_chart.engines(helm_chart.load_values(scenario)):
        service = services[f"loomstack-engine-{engine['name']}"]
        assert service["model"] == engine["name"]
        per_replica = {engine["gpu"]["resourceName"]: engine["gpu"]["count"]}
        assert service["gpus"]["per_replica"] == per_replica
        assert service["gpus"]["allocated"] == {
            k: v * engine["replicaCount"] for k, v in per_replica.items()
        }
        assert service["replicas"]["ready"] == engine["replicaCount"]
    assert services["loomstack-gateway"]["gpus"] is None
    assert not api.forbidden


def _as_api_server_serves(container: Json) -> None:
    """Quantities come back from the API server as strings (`1`, not 1), whatever was applied."""
    for part in ("requests", "limits"):
        values = container.get("resources", {}).get(part, {})
        for key, value in values.items():
            values[key] = str(value)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (the cluster CA of the stand-in)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in-kubernetes-api")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_standin_kubernetes_in_cluster_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path a pod takes: KUBERNETES_SERVICE_HOST/PORT, the mounted token, CA and namespace.

    The stand-in serves HTTPS with its own CA, as the cluster's API server does; the gateway
    finds its namespace in the ServiceAccount mount (no LOOMSTACK_GATEWAY_ADMIN_NAMESPACE).
    """
    from kubernetes.config import incluster_config

    from loomstack_gateway import admin_kubernetes

    cert, key = self_signed_certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    deployments, pods, events = cluster_objects()
    api = StandInKubernetesApi(
        chart_gateway_rules(), {d["metadata"]["name"]: d for d in deployments}, pods, events
    )
    server, url = serve_stand_in(api, tls)
    token, namespace = tmp_path / "token", tmp_path / "namespace"
    token.write_text(TOKEN)
    namespace.write_text(NAMESPACE)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(cert))
    monkeypatch.setattr(admin_kubernetes, "SERVICE_ACCOUNT_NAMESPACE", namespace)
    settings = GatewaySettings(
        api_keys=f"{ADMIN_KEY}:*",
        admin_backend="kubernetes",
        admin_label_selector=SELECTOR,
        home=tmp_path,
    )
    try:
        with TestClient(create_app(settings)) as client:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            listed = client.get("/admin/services", headers=headers)
            restarted = client.post("/admin/services/loomstack-gateway/restart", headers=headers)
    finally:
        server.shutdown()
        server.server_close()
    assert url.startswith("https://")
    assert listed.status_code == 200, listed.text
    assert listed.json()["namespace"] == NAMESPACE
    assert len(listed.json()["data"]) == 3
    assert restarted.status_code == 200, restarted.text
    assert not api.forbidden
