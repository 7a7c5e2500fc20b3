"""/admin/services on Kubernetes: this release's Deployments, their pods and GPUs, through the API.

The gateway talks to the Kubernetes API with the official `kubernetes` client and its own
ServiceAccount (in-cluster config), under the chart's Role: `get, list` on Deployments and pods,
`patch` on Deployments (and `list` on events only when `admin_events` is on). A restart is what
`kubectl rollout restart` does (the `kubectl.kubernetes.io/restartedAt` pod-template annotation);
scaling patches `spec.replicas`. Nothing here runs a command.

Only Deployments matching `admin_label_selector` are visible or touchable, so the Role's
namespace-wide `patch` cannot reach other applications' Deployments through /admin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from loomstack_kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    LoomstackError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from loomstack_kit.kubernetes_api import api_client

from .settings import GatewaySettings

log = logging.getLogger(__name__)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
COMPONENT = "app.kubernetes.io/component"
# Components the chart runs as one replica at most (curation owns its import queue).
SINGLE_REPLICA = frozenset({"curation"})
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Extended resources that are accelerators (the NVIDIA device plugin's, MIG slices included).
GPU_PREFIXES = ("nvidia.com/", "amd.com/", "gpu.intel.com/")
RECENT_EVENTS = 5
T = TypeVar("T")

Json = dict[str, Any]


class KubernetesAdmin:
    """Reports, restarts and scales the Loomstack Deployments of one namespace."""

    backend = "kubernetes"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.selector = settings.admin_label_selector
        self._lock = threading.Lock()
        self._api: Any = None
        self._namespace = settings.admin_namespace

    # -- the API client (built on first use, so a gateway outside a cluster still starts) --------

    def _client(self) -> Any:
        with self._lock:
            if self._api is None:
                self._api = api_client(
                    self.settings.admin_kubeconfig,
                    who="the gateway",
                    kubeconfig_setting="LOOMSTACK_GATEWAY_ADMIN_KUBECONFIG",
                )
                if not self._namespace:
                    try:
                        self._namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
                    except OSError:
                        self._namespace = "default"
            return self._api

    @property
    def namespace(self) -> str:
        self._client()
        return self._namespace

    async def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Runs one blocking client call in a thread; API failures become clear domain errors."""

        def run() -> T:
            return fn(self._client())

        try:
            return await asyncio.to_thread(run)
        except LoomstackError:
            raise
        except Exception as exc:
            raise _api_error(what, self._namespace, exc) from exc

    # -- reads -------------------------------------------------------------------------------------

    def _deployments(self, api: Any) -> list[Json]:
        from kubernetes import client

        found = client.AppsV1Api(api).list_namespaced_deployment(
            self._namespace, label_selector=self.selector
        )
        items: list[Json] = api.sanitize_for_serialization(found).get("items", [])
        return items

    def _pods(self, api: Any) -> list[Json]:
        from kubernetes import client

        found = client.CoreV1Api(api).list_namespaced_pod(
            self._namespace, label_selector=self.selector
        )
        items: list[Json] = api.sanitize_for_serialization(found).get("items", [])
        return items

    def _warning_events(self, api: Any) -> list[Json]:
        from kubernetes import client

        found = client.CoreV1Api(api).list_namespaced_event(
            self._namespace, field_selector="type=Warning"
        )
        items: list[Json] = api.sanitize_for_serialization(found).get("items", [])
        return items

    def _deployment(self, api: Any, name: str) -> Json:
        from kubernetes import client

        found = client.AppsV1Api(api).read_namespaced_deployment(name, self._namespace)
        deployment: Json = api.sanitize_for_serialization(found)
        if not _matches(deployment["metadata"].get("labels") or {}, self.selector):
            # Same answer as a missing one: /admin reaches only this release's services.
            raise NotFound(
                f"no Loomstack service named {name!r} in namespace {self._namespace!r}",
                code="service_not_found",
                param="name",
            )
        return deployment

    async def list_services(self) -> Json:
        deployments = await self._call("list deployments", self._deployments)
        pods = await self._call("list pods", self._pods)
        events: list[Json] | None = None
        if self.settings.admin_events:
            events = await self._call("list events", self._warning_events)
        services = [_service(d, pods, events) for d in deployments]
        services.sort(key=lambda s: str(s["name"]))
        return {
            "object": "list",
            "backend": self.backend,
            "namespace": self._namespace,
            "data": services,
        }

    # -- writes ------------------------------------------------------------------------------------

    async def _patch(
        self, what: str, name: str, body: Json, check: Callable[[Json], None] | None = None
    ) -> Json:
        from kubernetes import client

        def patch(api: Any) -> Json:
            current = self._deployment(api, name)
            if check is not None:
                check(current)
            patched = client.AppsV1Api(api).patch_namespaced_deployment(
                name,
                self._namespace,
                body,
                _content_type="application/strategic-merge-patch+json",
            )
            result: Json = api.sanitize_for_serialization(patched)
            return result

        deployment = await self._call(f"{what} deployment {name!r}", patch)
        pods = await self._call("list pods", self._pods)
        return _service(deployment, pods, None)

    async def restart(self, name: str) -> Json:
        """A rollout restart: new pods replace the old ones under the Deployment's strategy."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
        service = await self._patch("restart", name, body)
        return {"name": name, "restarted_at": now, "service": service}

    async def scale(self, name: str, replicas: int) -> Json:
        limit = self.settings.admin_max_replicas
        if not 0 <= replicas <= limit:
            raise InvalidArgument(
                f"replicas must be between 0 and {limit} (LOOMSTACK_GATEWAY_ADMIN_MAX_REPLICAS)",
                param="replicas",
            )

        def single_owner(deployment: Json) -> None:
            labels = deployment["metadata"].get("labels") or {}
            if labels.get(COMPONENT) in SINGLE_REPLICA and replicas > 1:
                raise FailedPrecondition(
                    f"{name!r} runs as one replica at most: the curation service alone owns "
                    "its import queue (scale it to 0 or 1)",
                    code="single_replica_service",
                    param="replicas",
                )

        service = await self._patch(
            "scale", name, {"spec": {"replicas": replicas}}, check=single_owner
        )
        return {"name": name, "replicas": replicas, "service": service}


# -- Kubernetes JSON → the /admin view ----------------------------------------------------------


def _matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors (`a=b,c==d,e!=f`), as the chart sets them."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.strip() not in labels:
            return False
    return True


def _gpus(containers: list[Json]) -> dict[str, int]:
    """Accelerators a pod (template) asks for: resource name → count, from the limits."""
    found: dict[str, int] = {}
    for container in containers:
        for key, value in ((container.get("resources") or {}).get("limits") or {}).items():
            if key.startswith(GPU_PREFIXES):
                found[key] = found.get(key, 0) + int(value)
    return found


def _pod(pod: Json) -> Json:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    last_failure: Json | None = None
    waiting: Json | None = None
    for container in statuses:
        terminated = (container.get("lastState") or {}).get("terminated")
        if terminated and (
            last_failure is None
            or _time(terminated.get("finishedAt")) > last_failure["finished_at"]
        ):
            last_failure = {
                "container": container["name"],
                "reason": terminated.get("reason"),
                "exit_code": terminated.get("exitCode"),
                "finished_at": _time(terminated.get("finishedAt")),
            }
        state_waiting = (container.get("state") or {}).get("waiting")
        if state_waiting:
            waiting = {
                "container": container["name"],
                "reason": state_waiting.get("reason"),
                "message": state_waiting.get("message"),
            }
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {}).get("status") == "True"
    not_ready = [
        {"type": c["type"], "reason": c.get("reason"), "message": c.get("message")}
        for c in conditions.values()
        if c.get("status") != "True"
    ]
    return {
        "name": pod["metadata"]["name"],
        "phase": status.get("phase"),
        "ready": ready,
        "restarts": sum(int(c.get("restartCount", 0)) for c in statuses),
        "node": (pod.get("spec") or {}).get("nodeName"),
        "started_at": _time(status.get("startTime")) or None,
        "gpus": _gpus((pod.get("spec") or {}).get("containers") or []),
        "last_failure": last_failure,
        "waiting": waiting,
        "not_ready": not_ready,
    }


def _service(deployment: Json, pods: list[Json], events: list[Json] | None) -> Json:
    metadata, spec = deployment["metadata"], deployment.get("spec") or {}
    status = deployment.get("status") or {}
    labels = metadata.get("labels") or {}
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    own = [
        p for p in pods if match and match.items() <= ((p["metadata"].get("labels") or {}).items())
    ]
    views = sorted((_pod(p) for p in own), key=lambda p: str(p["name"]))
    template = spec.get("template") or {}
    per_replica = _gpus((template.get("spec") or {}).get("containers") or [])
    scheduled = [p for p in views if p["node"] and p["phase"] in ("Pending", "Running")]
    gpus = None
    if per_replica:
        gpus = {
            "per_replica": per_replica,
            "allocated": {k: v * len(scheduled) for k, v in per_replica.items()},
            "nodes": sorted({str(p["node"]) for p in scheduled}),
        }
    view: Json = {
        "name": metadata["name"],
        "component": labels.get("app.kubernetes.io/component"),
        "model": labels.get("loomstack.io/model"),
        "replicas": {
            "desired": spec.get("replicas", 1),
            "ready": status.get("readyReplicas", 0),
            "updated": status.get("updatedReplicas", 0),
            "available": status.get("availableReplicas", 0),
        },
        "restarts": sum(p["restarts"] for p in views),
        "gpus": gpus,
        "restarted_at": ((template.get("metadata") or {}).get("annotations") or {}).get(
            RESTARTED_AT
        ),
        "conditions": [
            {"type": c["type"], "reason": c.get("reason"), "message": c.get("message")}
            for c in status.get("conditions") or []
            if c.get("status") != "True"
        ],
        "pods": views,
        "events": None,
    }
    if events is not None:
        names = {metadata["name"], *(p["name"] for p in views)}
        mine = [e for e in events if (e.get("involvedObject") or {}).get("name") in names]
        mine.sort(key=_event_time, reverse=True)
        view["events"] = [
            {
                "object": f"{e['involvedObject'].get('kind')}/{e['involvedObject'].get('name')}",
                "reason": e.get("reason"),
                "message": e.get("message"),
                "count": e.get("count") or 1,
                "last_seen": _event_time(e),
            }
            for e in mine[:RECENT_EVENTS]
        ]
    return view


def _event_time(event: Json) -> str:
    return _time(event.get("lastTimestamp") or event.get("eventTime"))


def _time(value: Any) -> str:
    """RFC 3339 in UTC with `Z`, as Kubernetes writes it (the client re-serializes `+00:00`)."""
    text = str(value or "")
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


def _api_error(what: str, namespace: str, exc: Exception) -> LoomstackError:
    """A Kubernetes API failure as the error the admin caller sees (message from the API)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    # The exception's own text names the API server's address: it goes to the log only.
    if isinstance(exc, HTTPError | OSError):
        log.warning("the Kubernetes API did not answer", extra={"what": what, "error": repr(exc)})
        return Unavailable(
            f"the Kubernetes API did not answer ({what}); the gateway's log has the detail",
            code="kubernetes_unavailable",
        )
    if not isinstance(exc, ApiException):
        log.warning("unexpected Kubernetes API answer", extra={"what": what, "error": repr(exc)})
        return Unavailable(
            f"unexpected answer from the Kubernetes API ({what}); the gateway's log has the detail",
            code="kubernetes_unavailable",
        )
    message = _status_message(exc)
    if exc.status == 403:
        return PermissionDenied(
            f"the gateway's ServiceAccount may not {what} in namespace {namespace!r}: {message} "
            "(RBAC: see the chart's gateway Role, gateway.admin.*)",
            code="kubernetes_forbidden",
        )
    if exc.status == 404:
        return NotFound(
            f"no Loomstack service: {message} (namespace {namespace!r})",
            code="service_not_found",
            param="name",
        )
    if exc.status == 401:
        return Unavailable(
            f"the Kubernetes API refused the gateway's credentials ({what}): {message}",
            code="kubernetes_unauthorized",
        )
    if exc.status in (400, 409, 422):
        return InvalidArgument(f"the Kubernetes API refused to {what}: {message}")
    return Unavailable(
        f"the Kubernetes API failed to {what}: HTTP {exc.status}: {message}",
        code="kubernetes_unavailable",
    )


def _status_message(exc: Any) -> str:
    """The `message` of the Kubernetes Status object in an error body, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
