"""A stand-in Kubernetes API server for `helm template --dry-run=server` (no cluster runs here).

It speaks just enough of the real API for Helm to render an upgrade: `/version`, discovery of
the group versions and kinds the chart renders, GET of Secrets it holds (what the chart's
`lookup` reads to keep generated secrets across upgrades), and 404 for every other object, as
the API answers for objects that do not exist yet. Nothing is ever written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# group/version -> (resource, kind, namespaced) the chart renders.
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("configmaps", "ConfigMap", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
        ("namespaces", "Namespace", False),
    ],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "batch/v1": [("jobs", "Job", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    "networking.k8s.io/v1": [
        ("networkpolicies", "NetworkPolicy", True),
        ("ingresses", "Ingress", True),
    ],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
}


def _resource_list(group_version: str) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {
                "name": name,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": ["get", "list", "create", "update", "patch", "delete"],
            }
            for name, kind, namespaced in RESOURCES[group_version]
        ],
    }


def _group_list() -> dict[str, Any]:
    groups = []
    for group_version in RESOURCES:
        if "/" not in group_version:
            continue
        group, version = group_version.split("/")
        entry = {"groupVersion": group_version, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _not_found(path: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"{path} not found",
        "reason": "NotFound",
        "code": 404,
    }


@dataclass
class StandinCluster:
    """The running stand-in: its kubeconfig and the Secrets it serves (name -> data, base64)."""

    kubeconfig: Path
    release: str
    secrets: dict[str, dict[str, str]]
    requests: list[str]


@contextmanager
def standin_cluster(directory: Path, namespace: str, release: str) -> Iterator[StandinCluster]:
    """Serves the stand-in on a free loopback port until the block ends; its Secrets look like
    release `release`'s own."""
    cluster = StandinCluster(directory / "kubeconfig", release, {}, [])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            cluster.requests.append(f"{self.command} {self.path}")

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            parts = path.strip("/").split("/")
            if path == "/version":
                self._send(200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0"})
            elif path == "/api":
                self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
            elif path == "/apis":
                self._send(200, _group_list())
            elif path == "/api/v1":
                self._send(200, _resource_list("v1"))
            elif len(parts) == 3 and parts[0] == "apis" and f"{parts[1]}/{parts[2]}" in RESOURCES:
                self._send(200, _resource_list(f"{parts[1]}/{parts[2]}"))
            elif (
                parts[:4] == ["api", "v1", "namespaces", namespace]
                and parts[4:5] == ["secrets"]
                and len(parts) == 6
                and parts[5] in cluster.secrets
            ):
                # As an earlier release left it: Helm adopts only objects it owns.
                metadata = {
                    "name": parts[5],
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "Helm"},
                    "annotations": {
                        "meta.helm.sh/release-name": cluster.release,
                        "meta.helm.sh/release-namespace": namespace,
                    },
                }
                body = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata}
                self._send(200, {**body, "type": "Opaque", "data": cluster.secrets[parts[5]]})
            else:
                self._send(404, _not_found(path))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cluster.kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "standin",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "standin", "user": {"token": "standin"}}],
                "contexts": [
                    {
                        "name": "standin",
                        "context": {
                            "cluster": "standin",
                            "user": "standin",
                            "namespace": namespace,
                        },
                    }
                ],
                "current-context": "standin",
            }
        )
    )
    try:
        yield cluster
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
