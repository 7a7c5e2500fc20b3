"""Policy tests over the rendered chart: what every scenario in helm/loomstack/ci/ must satisfy.

The manifests come from the real `helm template` (see conftest.py); `make helm-lint` validates
the same objects against the Kubernetes schemas. These tests check what a schema cannot: probes,
GPU placement, Pod Security "restricted", least-privilege RBAC, labels and pinned images.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import helm_chart
from helm_chart import PodOwner, containers, engines, load_values, pod_specs

Objects = list[dict[str, Any]]
SCENARIOS = list(helm_chart.scenarios())
GRPC_COMPONENTS = ("inference-api", "inference-engine", "curation", "training")
GRPC_HEALTH_NAMES = {
    "startupProbe": "startup",
    "livenessProbe": "liveness",
    "readinessProbe": "readiness",
}
GPU_KEY = re.compile(r"^(nvidia\.com|amd\.com|gpu\.intel\.com)/")
REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


@pytest.fixture(params=SCENARIOS)
def scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(rendered: dict[str, Objects], scenario: str) -> Objects:
    return rendered[scenario]


@pytest.fixture
def values(scenario: str) -> dict[str, Any]:
    return load_values(helm_chart.scenarios()[scenario])


def mtls_on(values: dict[str, Any]) -> bool:
    return bool(values["serviceAuth"]["mtls"]["enabled"])


def by_kind(objects: Objects, kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's plain `value` environment variables."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def engine_deployment(objects: Objects, model: str) -> dict[str, Any]:
    matches = [
        d
        for d in by_kind(objects, "Deployment").values()
        if d["metadata"]["labels"].get("loomstack.io/model") == model
    ]
    assert len(matches) == 1, f"expected one engine Deployment for model {model}"
    return matches[0]


def all_containers(objects: Objects) -> Iterator[tuple[str, dict[str, Any]]]:
    for owner in pod_specs(objects):
        for container in containers(owner.spec):
            yield f"{owner.kind}/{owner.name}/{container['name']}", container


# -- probes and shutdown -----------------------------------------------------------------------


def test_every_grpc_container_has_native_grpc_probes(
    objects: Objects, values: dict[str, Any]
) -> None:
    """startup/liveness/readiness: `grpc:` probes on the numeric gRPC port, the kit's names;
    with mTLS on the plaintext `health` port instead (the kubelet's probes speak no TLS)."""
    probed = "health" if mtls_on(values) else "grpc"
    grpc_pods = 0
    for owner in pod_specs(objects):
        for container in owner.spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if "grpc" not in ports:
                continue
            grpc_pods += 1
            where = f"{owner.kind}/{owner.name}/{container['name']}"
            for probe, service in GRPC_HEALTH_NAMES.items():
                assert probe in container, f"{where}: no {probe}"
                grpc = container[probe].get("grpc")
                assert grpc is not None, f"{where}: {probe} is not a native gRPC probe"
                assert isinstance(grpc["port"], int), f"{where}: {probe} port must be numeric"
                assert grpc["port"] == ports[probed], f"{where}: {probe} probes another port"
                assert grpc["service"] == service, f"{where}: {probe} checks {grpc['service']!r}"
    components = {o.labels["app.kubernetes.io/component"] for o in pod_specs(objects)}
    expected = sum(
        1
        for o in pod_specs(objects)
        if o.kind == "Deployment" and o.labels["app.kubernetes.io/component"] in GRPC_COMPONENTS
    )
    assert grpc_pods == expected, f"gRPC components {components & set(GRPC_COMPONENTS)}"


def test_engines_get_a_long_startup_budget(objects: Objects, values: dict[str, Any]) -> None:
    """The startupProbe budget covers a big model's download and load (liveness waits for it)."""
    for engine in engines(values):
        container = engine_deployment(objects, engine["name"])["spec"]["template"]["spec"][
            "containers"
        ][0]
        probe = container["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget >= 20 * 60, f"{engine['name']}: startup budget {budget}s"


def test_grace_period_outlasts_prestop_and_graceful_stop(objects: Objects) -> None:
    """SIGKILL never comes while a server drains: preStop sleep + grace < terminationGracePeriod."""
    for deployment in by_kind(objects, "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"]:
            sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
            grace = [v for k, v in env_of(container).items() if k.endswith("_GRACE_SECONDS")]
            if deployment["metadata"]["labels"]["app.kubernetes.io/component"] in (
                *GRPC_COMPONENTS,
                "gateway",
            ):
                assert sleep, f"{deployment['metadata']['name']}: no preStop sleep"
                assert grace, f"{deployment['metadata']['name']}: no *_GRACE_SECONDS"
            if sleep and grace:
                needed = sleep["seconds"] + float(grace[0])
                assert spec["terminationGracePeriodSeconds"] > needed


# -- GPUs --------------------------------------------------------------------------------------


def test_gpu_limits_exactly_where_asked(objects: Objects, values: dict[str, Any]) -> None:
    """Each engine's GPUs are a limit of its resource name; no other container asks for GPUs."""
    wanted: dict[str, dict[str, int]] = {}
    for engine in engines(values):
        name = engine_deployment(objects, engine["name"])["metadata"]["name"]
        count = int(engine["gpu"]["count"])
        wanted[name] = {engine["gpu"]["resourceName"]: count} if count else {}
    for owner in pod_specs(objects):
        for container in containers(owner.spec):
            resources = container["resources"]
            requested = {k for k in resources.get("requests", {}) if GPU_KEY.match(k)}
            assert not requested, f"{owner.name}: GPUs in requests {requested} (limits only)"
            limits = {k: v for k, v in resources.get("limits", {}).items() if GPU_KEY.match(k)}
            expected = wanted.get(owner.name, {}) if owner.kind == "Deployment" else {}
            assert limits == expected, f"{owner.name}/{container['name']}"


def test_gpu_engines_schedule_on_gpu_nodes(objects: Objects, values: dict[str, Any]) -> None:
    """GPU product selector, the nvidia.com/gpu:NoSchedule toleration, runtimeClass, /dev/shm."""
    for engine in engines(values):
        spec = engine_deployment(objects, engine["name"])["spec"]["template"]["spec"]
        gpus = int(engine["gpu"]["count"])
        selector = spec.get("nodeSelector", {})
        if gpus and engine["gpu"]["product"]:
            assert selector["nvidia.com/gpu.product"] == engine["gpu"]["product"]
        else:
            assert "nvidia.com/gpu.product" not in selector
        tolerations = spec.get("tolerations", [])
        gpu_toleration = {
            "key": "nvidia.com/gpu",
            "operator": "Exists",
            "effect": "NoSchedule",
        }
        assert (gpu_toleration in tolerations) == bool(gpus and engine["gpu"]["tolerateGpuTaint"])
        assert spec.get("runtimeClassName", "") == engine["runtimeClassName"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["/dev/shm"] == "dshm"
        if engine["modelCache"]["enabled"]:
            claim = volumes["model-cache"]["persistentVolumeClaim"]["claimName"]
            if not engine["modelCache"]["existingClaim"]:
                assert claim in by_kind(objects, "PersistentVolumeClaim")
            else:
                assert claim == engine["modelCache"]["existingClaim"]


def test_one_engine_per_model_with_its_vllm_settings(
    objects: Objects, values: dict[str, Any]
) -> None:
    """Served name, source, context length, tensor parallelism, GPU memory and LoRA reach vLLM."""
    models = engines(values)
    engine_deployments = [
        d
        for d in by_kind(objects, "Deployment").values()
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "inference-engine"
    ]
    assert len(engine_deployments) == len(models)
    for engine in models:
        deployment = engine_deployment(objects, engine["name"])
        assert deployment["spec"]["replicas"] == engine["replicaCount"]
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["LOOMSTACK_INFERENCE_ROLES"] == "engine"
        assert env["LOOMSTACK_INFERENCE_MODEL_NAME"] == (engine.get("servedName") or engine["name"])
        source = engine["source"]
        assert env["LOOMSTACK_INFERENCE_MODEL_PATH"] == (
            source.get("huggingface") or source.get("path")
        )
        assert env["LOOMSTACK_INFERENCE_MAX_MODEL_LEN"] == str(engine["maxModelLen"])
        args = shlex.split(env["LOOMSTACK_INFERENCE_ENGINE_ARGS"])
        if int(engine["gpu"]["count"]):
            tp = args[args.index("--tensor-parallel-size") + 1]
            assert int(tp) == engine["tensorParallelSize"]
            memory = args[args.index("--gpu-memory-utilization") + 1]
            assert float(memory) == engine["gpu"]["memoryUtilization"]
        assert ("--enable-lora" in args) == bool(engine["lora"]["enabled"])
        if engine["lora"]["enabled"]:
            assert int(args[args.index("--max-loras") + 1]) == engine["lora"]["maxLoras"]


# -- Pod Security "restricted" and resources -----------------------------------------------------


def test_every_pod_meets_pod_security_restricted(objects: Objects) -> None:
    """Non-root, seccomp RuntimeDefault, no privilege escalation, drop ALL, read-only root fs."""
    for owner in pod_specs(objects):
        spec, where = owner.spec, f"{owner.kind}/{owner.name}"
        pod_sc = spec.get("securityContext", {})
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{where}: {host}"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser", 1) != 0, where
        for container in containers(spec):
            sc = container.get("securityContext", {})
            cwhere = f"{where}/{container['name']}"
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", cwhere
            assert sc.get("allowPrivilegeEscalation") is False, cwhere
            assert not sc.get("privileged"), cwhere
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cwhere
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, cwhere
            assert sc.get("readOnlyRootFilesystem") is True, cwhere
            for port in container.get("ports", []):
                assert "hostPort" not in port, cwhere


def test_every_container_has_resources(objects: Objects) -> None:
    for where, container in all_containers(objects):
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
        assert "memory" in resources.get("limits", {}), where


# -- images and labels -------------------------------------------------------------------------


def test_images_are_pinned(objects: Objects) -> None:
    """A version tag or a digest, never `latest` or no tag."""
    for where, container in all_containers(objects):
        image = container["image"]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{where}: {image} has no tag"
        assert tag != "latest", f"{where}: {image}"


def test_recommended_labels_everywhere(objects: Objects) -> None:
    """app.kubernetes.io/* on every object and pod template; selectors match the pods."""
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        for label in REQUIRED_LABELS:
            assert labels.get(label), f"{where}: no {label}"
        assert labels["app.kubernetes.io/part-of"] == "loomstack"
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            pod_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= pod_labels.items()
            for label in REQUIRED_LABELS:
                assert pod_labels.get(label), f"{obj['metadata']['name']} pods: no {label}"


def test_every_object_names_the_release_namespace(objects: Objects) -> None:
    """An explicit `metadata.namespace` on every (namespaced) object: `kubectl apply -f` of the
    rendered manifests, or a GitOps tool that applies them, never lands in `default`."""
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"].get("namespace") == helm_chart.NAMESPACE, where


# -- RBAC and ServiceAccounts ------------------------------------------------------------------


Rule = tuple[str, str, frozenset[str], frozenset[str]]  # group, resource, verbs, resourceNames


def rules_of(role: dict[str, Any]) -> set[Rule]:
    return {
        (group, resource, frozenset(rule["verbs"]), frozenset(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def gateway_rules(deployments: set[str]) -> set[Rule]:
    """What /admin/services needs (admin_kubernetes.py): list Deployments and pods, get and patch
    this release's own Deployments by name."""
    return {
        ("apps", "deployments", frozenset({"list"}), frozenset()),
        ("apps", "deployments", frozenset({"get", "patch"}), frozenset(deployments)),
        ("", "pods", frozenset({"list"}), frozenset()),
    }


TRAINING_RULES = {
    ("batch", "jobs", frozenset({"create", "get", "watch", "delete"}), frozenset()),
    ("", "pods", frozenset({"get", "list"}), frozenset()),
    ("", "pods/log", frozenset({"get"}), frozenset()),
}


def test_rbac_is_least_privilege(objects: Objects, values: dict[str, Any]) -> None:
    """Namespaced Roles with exactly the verbs each component needs; nothing on Secrets."""
    assert not by_kind(objects, "ClusterRole")
    assert not by_kind(objects, "ClusterRoleBinding")
    roles = {
        r["metadata"]["labels"]["app.kubernetes.io/component"]: r
        for r in objects
        if r["kind"] == "Role"
    }
    expected = set()
    if values["gateway"]["admin"]["enabled"]:
        expected.add("gateway")
        assert rules_of(roles["gateway"]) == gateway_rules(set(by_kind(objects, "Deployment")))
    if values["training"]["enabled"]:
        expected.add("training")
        assert rules_of(roles["training"]) == TRAINING_RULES
    assert set(roles) == expected
    for role in roles.values():
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"]
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_gateway_may_read_events_only_when_asked(render_with: Callable[..., Objects]) -> None:
    objects = render_with({"gateway": {"admin": {"readEvents": True}}})
    role = by_kind(objects, "Role")["loomstack-gateway"]
    assert rules_of(role) == {
        *gateway_rules(set(by_kind(objects, "Deployment"))),
        ("", "events", frozenset({"list"}), frozenset()),
    }
    env = env_of(
        by_kind(objects, "Deployment")["loomstack-gateway"]["spec"]["template"]["spec"][
            "containers"
        ][0]
    )
    assert env["LOOMSTACK_GATEWAY_ADMIN_EVENTS"] == "true"


def test_gateway_may_touch_only_this_releases_deployments(objects: Objects) -> None:
    """Every verb that can name an object is bound to this release's Deployments by name: all of
    them (curation, training, Label Studio and each engine when rendered), and nothing else."""
    roles = [
        r for r in by_kind(objects, "Role").values() if r["metadata"]["name"].endswith("gateway")
    ]
    if not roles:
        return
    deployments = set(by_kind(objects, "Deployment"))
    assert {"loomstack-gateway", "loomstack-inference-api"} <= deployments
    for rule in roles[0]["rules"]:
        if set(rule["verbs"]) - {"list"}:
            assert set(rule.get("resourceNames", [])) == deployments, rule
            assert rule["resources"] == ["deployments"], rule
        else:
            assert "resourceNames" not in rule, "resourceNames cannot restrict list"


def test_role_bindings_and_service_accounts(objects: Objects) -> None:
    """A ServiceAccount per component; only the gateway and training mount an API token."""
    accounts = by_kind(objects, "ServiceAccount")
    for binding in by_kind(objects, "RoleBinding").values():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] in by_kind(objects, "Role")
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
    for owner in pod_specs(objects):
        account = owner.spec.get("serviceAccountName")
        component = owner.labels["app.kubernetes.io/component"]
        if owner.kind == "Pod":  # the helm test pod: no account, no token
            assert owner.spec["automountServiceAccountToken"] is False
            continue
        assert account in accounts, f"{owner.name}: no ServiceAccount of its own"
        token = owner.spec.get("automountServiceAccountToken")
        if component in ("gateway", "training"):
            continue
        assert token is False, f"{owner.name} mounts an API token"


# -- network -----------------------------------------------------------------------------------


def test_only_the_gateway_is_reachable_from_outside(objects: Objects) -> None:
    """Every ingress rule but the gateway's names peers of this release."""
    policies = by_kind(objects, "NetworkPolicy")
    assert policies, "networkPolicy.enabled is on by default"
    covered: set[str] = set()
    for policy in policies.values():
        selector = policy["spec"]["podSelector"]
        components = selector.get("matchLabels", {}).get("app.kubernetes.io/component")
        names = [components] if components else []
        for expression in selector.get("matchExpressions", []):
            if expression["key"] == "app.kubernetes.io/component":
                names += expression["values"]
        covered |= set(names)
        for rule in policy["spec"].get("ingress", []):
            if names == ["gateway"]:
                continue
            assert rule.get("from"), f"{policy['metadata']['name']}: open to everyone"
    workloads = {o.labels["app.kubernetes.io/component"] for o in pod_specs(objects)}
    exposed = {"migrations", "test"}
    assert workloads - exposed <= covered, f"no NetworkPolicy for {workloads - exposed - covered}"
    for service in by_kind(objects, "Service").values():
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        if component != "gateway":
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP", component


# -- helm test ---------------------------------------------------------------------------------


def test_helm_test_checks_the_gateway_and_every_grpc_service(
    objects: Objects, values: dict[str, Any]
) -> None:
    """The test pod checks each gRPC Service where the kubelet does: the gRPC port, or with mTLS
    the plaintext health port (it has no client certificate)."""
    probed = "health" if mtls_on(values) else "grpc"
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert len(pods) == 1 and pods[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pods[0]["spec"]["containers"][0]["args"]
    assert any(a.startswith("http=") and a.endswith("/readyz") for a in args)
    grpc_targets = {a.removeprefix("grpc=") for a in args if a.startswith("grpc=")}
    for service in by_kind(objects, "Service").values():
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        if "grpc" in ports:
            assert f"{service['metadata']['name']}:{ports[probed]}" in grpc_targets
    assert "startup" in args[0] and "liveness" in args[0] and "readiness" in args[0]


def test_migrations_run_as_a_hook_before_upgrades(objects: Objects, values: dict[str, Any]) -> None:
    jobs = [
        j
        for j in by_kind(objects, "Job").values()
        if "helm.sh/hook" in j["metadata"].get("annotations", {})
    ]
    assert len(jobs) == 1
    hooks = set(jobs[0]["metadata"]["annotations"]["helm.sh/hook"].split(","))
    first = "pre-install" if values["postgresql"]["mode"] == "external" else "post-install"
    assert hooks == {first, "pre-upgrade"}
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_gateway_admin_backend_follows_the_values(
    rendered: dict[str, Objects], render_with: Callable[..., Objects]
) -> None:
    """admin on: the kubernetes backend with a token; off: `none`, no Role, no token."""
    on = by_kind(rendered[helm_chart.DEFAULTS], "Deployment")["loomstack-gateway"]
    env = env_of(on["spec"]["template"]["spec"]["containers"][0])
    assert env["LOOMSTACK_GATEWAY_ADMIN_BACKEND"] == "kubernetes"
    assert on["spec"]["template"]["spec"]["automountServiceAccountToken"] is True

    objects = render_with({"gateway": {"admin": {"enabled": False}}})
    off = by_kind(objects, "Deployment")["loomstack-gateway"]
    env = env_of(off["spec"]["template"]["spec"]["containers"][0])
    assert env["LOOMSTACK_GATEWAY_ADMIN_BACKEND"] == "none"
    assert off["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert (
        by_kind(objects, "ServiceAccount")["loomstack-gateway"]["automountServiceAccountToken"]
        is False
    )
    assert "loomstack-gateway" not in by_kind(objects, "Role")


# -- curation and training: the chart matches the services' settings ----------------------------


def component_deployment(objects: Objects, component: str) -> dict[str, Any] | None:
    matches = [
        d
        for d in by_kind(objects, "Deployment").values()
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(matches) <= 1, f"several {component} Deployments"
    return matches[0] if matches else None


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def setting_envs(settings_class: type, prefix: str) -> set[str]:
    """The environment variable of every field of a pydantic-settings class: the prefixed field
    name, or its alias (the kit's installation-wide settings such as
    `LOOMSTACK_SERVICE_SECRET_FILE` carry no service prefix)."""
    names = set()
    for name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif alias is not None:
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def image_name(image: str) -> str:
    """`registry/repo/name:tag` or `...@sha256:...` → `name`."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


def test_curation_runs_the_service_with_its_settings(
    objects: Objects, values: dict[str, Any]
) -> None:
    """`serve`, native gRPC probes, the HTTP port, real setting names, one replica at most."""
    deployment = component_deployment(objects, "curation")
    if not values["curation"]["enabled"]:
        assert deployment is None
        return
    from loomstack_curation.settings import CurationSettings

    assert deployment is not None
    c = values["curation"]
    spec = deployment["spec"]
    assert spec["replicas"] <= 1, "one pod owns the import queue"
    assert spec["strategy"]["type"] == "Recreate", "a rolling update would run two owners"
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    health = {"health": c["healthPort"]} if mtls_on(values) else {}
    assert ports == {"grpc": c["port"], "http": c["httpPort"], **health}
    probed = c["healthPort"] if mtls_on(values) else c["port"]
    for probe, service in GRPC_HEALTH_NAMES.items():
        assert container[probe]["grpc"] == {"port": probed, "service": service}
    names = env_names(container) - {"HOME"}
    known = setting_envs(CurationSettings, "LOOMSTACK_CURATION_")
    extra = {e["name"] for e in c["extraEnv"] + values["plugins"]["env"]}
    assert names - extra <= known, f"not curation settings: {names - extra - known}"
    env = env_of(container)
    assert env["LOOMSTACK_CURATION_PORT"] == str(c["port"])
    assert env["LOOMSTACK_CURATION_HTTP_PORT"] == str(c["httpPort"])
    assert env["LOOMSTACK_CURATION_PUBLIC_URL"] == (
        c["publicUrl"] or f"http://{deployment['metadata']['name']}.loomstack.svc:{c['httpPort']}"
    )
    secret_env = {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}
    assert "secretKeyRef" in secret_env["LOOMSTACK_CURATION_WEBHOOK_SECRET"]
    assert "secretKeyRef" in secret_env["LOOMSTACK_CURATION_DATABASE_URL"]
    if values["labelStudio"]["mode"] == "disabled":
        assert "LOOMSTACK_CURATION_LABEL_STUDIO_URL" not in names
    else:
        assert env["LOOMSTACK_CURATION_LABEL_STUDIO_URL"].startswith("http")
        assert "secretKeyRef" in secret_env["LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN"]
    # The schemas: a ConfigMap mounted read-only where the service reads them.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["schemas"]["mountPath"] == env["LOOMSTACK_CURATION_SCHEMAS_DIR"]
    assert mounts["schemas"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    config_map = volumes["schemas"]["configMap"]["name"]
    if c["existingSchemasConfigMap"]:
        assert config_map == c["existingSchemasConfigMap"]
    else:
        assert config_map in by_kind(objects, "ConfigMap")
    # The Service carries both ports.
    service = by_kind(objects, "Service")[deployment["metadata"]["name"]]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": c["port"],
        "http": c["httpPort"],
        **health,
    }


def test_curation_schemas_and_webhook_secret_from_values(
    render_with: Callable[..., Objects],
) -> None:
    """Schema files become ConfigMap keys (`.yaml` added); the webhook secret is generated."""
    objects = render_with(
        {
            "curation": {
                "enabled": True,
                "schemas": {"classify_ticket": "id: classify_ticket\n", "b.json": "{}"},
            }
        }
    )
    data = by_kind(objects, "ConfigMap")["loomstack-curation-schemas"]["data"]
    assert data == {"classify_ticket.yaml": "id: classify_ticket\n", "b.json": "{}"}
    secret = by_kind(objects, "Secret")["loomstack-curation"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["data"]["webhook-secret"]) > 40

    objects = render_with(
        {"curation": {"enabled": True, "webhook": {"existingSecret": "mine", "secretKey": "s"}}}
    )
    assert "loomstack-curation" not in by_kind(objects, "Secret")
    container = component_deployment(objects, "curation")["spec"]["template"]["spec"]["containers"][
        0
    ]
    ref = next(e for e in container["env"] if e["name"] == "LOOMSTACK_CURATION_WEBHOOK_SECRET")
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "s"}


def test_migrations_include_curation_and_training_when_enabled(
    objects: Objects, values: dict[str, Any]
) -> None:
    job = next(
        j
        for j in by_kind(objects, "Job").values()
        if "helm.sh/hook" in j["metadata"].get("annotations", {})
    )
    steps = job["spec"]["template"]["spec"]["containers"]
    assert all(s["args"] == ["migrate"] for s in steps)
    images = {s["name"]: s["image"] for s in steps}
    assert image_name(images["migrate"]) == "inference"
    for service in ("curation", "training"):
        step = f"migrate-{service}"
        assert (step in images) == values[service]["enabled"]
        if values[service]["enabled"]:
            assert image_name(images[step]) == service
            env = env_names(next(s for s in steps if s["name"] == step))
            assert f"LOOMSTACK_{service.upper()}_DATABASE_URL" in env


def ingress_rules_to(
    objects: Objects, component: str, port: int
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(policy, peers) of every ingress rule that lets traffic reach `component` on `port`."""
    found = []
    for policy in by_kind(objects, "NetworkPolicy").values():
        selector = policy["spec"]["podSelector"]
        names = [selector.get("matchLabels", {}).get("app.kubernetes.io/component")]
        for expression in selector.get("matchExpressions", []):
            if expression["key"] == "app.kubernetes.io/component":
                names += expression["values"]
        if component not in names:
            continue
        for rule in policy["spec"].get("ingress", []):
            rule_ports = [p["port"] for p in rule.get("ports", [])]
            if not rule_ports or port in rule_ports:
                found.append((policy, rule.get("from", [])))
    return found


def peer_components(peers: list[dict[str, Any]]) -> set[str]:
    """The release components a list of podSelector peers names."""
    names: set[str] = set()
    for peer in peers:
        selector = peer.get("podSelector")
        if selector is None:
            continue
        if component := selector.get("matchLabels", {}).get("app.kubernetes.io/component"):
            names.add(component)
        for expression in selector.get("matchExpressions", []):
            if expression["key"] == "app.kubernetes.io/component":
                names |= set(expression["values"])
    return names


def test_curation_http_port_only_for_label_studio_and_the_gateway(
    objects: Objects, values: dict[str, Any]
) -> None:
    """Webhooks and ML backend calls: the bundled Label Studio, the gateway, the extra peers."""
    if not values["curation"]["enabled"]:
        return
    c = values["curation"]
    http_rules = ingress_rules_to(objects, "curation", c["httpPort"])
    assert http_rules, "nothing may reach the curation HTTP port"
    allowed = {"gateway"} | (
        {"label-studio"} if values["labelStudio"]["mode"] == "bundled" else set()
    )
    extra = values["networkPolicy"]["curationHttpFrom"]
    for _policy, peers in http_rules:
        assert peers, "the curation HTTP port is open to everyone"
        assert peer_components(peers) == allowed
        assert [p for p in peers if "podSelector" not in p] == extra
    grpc_rules = ingress_rules_to(objects, "curation", c["port"])
    assert any("gateway" in peer_components(peers) for _, peers in grpc_rules)
    assert all(peers for _, peers in grpc_rules)
    if values["labelStudio"]["mode"] == "bundled":
        ls_rules = ingress_rules_to(
            objects, "label-studio", values["labelStudio"]["bundled"]["port"]
        )
        assert any("curation" in peer_components(peers) for _, peers in ls_rules)


def test_training_runs_the_service_with_its_settings(
    objects: Objects, values: dict[str, Any]
) -> None:
    """`serve`, the kubernetes runner and only environment variables the service reads."""
    deployment = component_deployment(objects, "training")
    if not values["training"]["enabled"]:
        assert deployment is None
        return
    from loomstack_training.settings import TrainingSettings

    assert deployment is not None
    t = values["training"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve"]
    names = env_names(container) - {"HOME"}
    known = setting_envs(TrainingSettings, "LOOMSTACK_TRAINING_")
    extra = {e["name"] for e in t["extraEnv"]}
    assert names - extra <= known, f"not training settings: {names - extra - known}"
    env = env_of(container)
    assert env["LOOMSTACK_TRAINING_RUNNER"] == "kubernetes"
    assert env["LOOMSTACK_TRAINING_KUBERNETES_GPU_COUNT"] == str(t["job"]["gpuCount"])
    claim = env["LOOMSTACK_TRAINING_KUBERNETES_WORK_VOLUME_CLAIM"]
    assert claim == t["workVolume"]["existingClaim"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["work"] == env["LOOMSTACK_TRAINING_WORK_DIR"]


# -- plugins ---------------------------------------------------------------------------------

PLUGIN_HOSTS = {"curation": "CURATION", "gateway": "GATEWAY", "migrate-curation": "CURATION"}


def plugin_hosts(objects: Objects) -> dict[str, dict[str, Any]]:
    """The containers that take the plugin settings, those rendered: the curation and gateway
    Deployments and the migrations hook's curation step (its `migrate` migrates the plugins')."""
    found = {}
    for component in ("curation", "gateway"):
        deployment = component_deployment(objects, component)
        if deployment is not None:
            found[component] = deployment["spec"]["template"]["spec"]["containers"][0]
    for job in by_kind(objects, "Job").values():
        if "helm.sh/hook" in job["metadata"].get("annotations", {}):
            for step in job["spec"]["template"]["spec"]["containers"]:
                if step["name"] == "migrate-curation":
                    found["migrate-curation"] = step
    return found


def test_plugin_settings_follow_the_values(objects: Objects, values: dict[str, Any]) -> None:
    """`plugins.enabled` and `required` reach curation, the gateway and the migrations' curation
    step as comma-separated names, nothing while none is enabled; `plugins.env` reaches curation
    and the migrations, never the gateway."""
    p = values["plugins"]
    hosts = plugin_hosts(objects)
    assert "gateway" in hosts
    assert ("curation" in hosts) == ("migrate-curation" in hosts) == values["curation"]["enabled"]
    plugin_env = [e["name"] for e in p["env"]]
    for where, container in hosts.items():
        service = PLUGIN_HOSTS[where]
        env = env_of(container)
        wanted = {f"LOOMSTACK_{service}_PLUGINS": ",".join(p["enabled"])} if p["enabled"] else {}
        if p["required"]:
            wanted[f"LOOMSTACK_{service}_PLUGINS_REQUIRED"] = ",".join(p["required"])
        got = {k: v for k, v in env.items() if k.startswith(f"LOOMSTACK_{service}_PLUGINS")}
        assert got == wanted, where
        given = {e["name"]: e for e in container["env"]}
        for name in plugin_env:
            if where == "gateway":
                assert name not in given, f"{where}: {name} is curation's"
            else:
                assert given[name] == next(e for e in p["env"] if e["name"] == name), where


def test_plugins_are_off_by_default(render_with: Callable[..., Objects]) -> None:
    hosts = plugin_hosts(render_with({"curation": {"enabled": True}}))
    assert set(hosts) == set(PLUGIN_HOSTS)
    for where, container in hosts.items():
        assert not [n for n in env_names(container) if "PLUGINS" in n], where


def test_enabled_and_required_plugins_and_their_env(render_with: Callable[..., Objects]) -> None:
    secret = {"secretKeyRef": {"name": "aris-db", "key": "url"}}
    objects = render_with(
        {
            "curation": {"enabled": True},
            "plugins": {
                "enabled": ["hello", "aris"],
                "required": ["aris"],
                "env": [
                    {"name": "LOOMSTACK_ARIS_DATABASE_URL", "valueFrom": secret},
                    {"name": "LOOMSTACK_HELLO_MOOD", "value": "Fine"},
                ],
            },
        }
    )
    hosts = plugin_hosts(objects)
    assert set(hosts) == set(PLUGIN_HOSTS)
    for where, container in hosts.items():
        service = PLUGIN_HOSTS[where]
        env = env_of(container)
        assert env[f"LOOMSTACK_{service}_PLUGINS"] == "hello,aris", where
        assert env[f"LOOMSTACK_{service}_PLUGINS_REQUIRED"] == "aris", where
        given = {e["name"]: e for e in container["env"]}
        if where == "gateway":
            assert not {"LOOMSTACK_ARIS_DATABASE_URL", "LOOMSTACK_HELLO_MOOD"} & set(given)
        else:
            assert given["LOOMSTACK_ARIS_DATABASE_URL"]["valueFrom"] == secret, where
            assert env["LOOMSTACK_HELLO_MOOD"] == "Fine", where
    # Enabled alone: no required list.
    objects = render_with({"plugins": {"enabled": ["hello"]}})
    env = env_of(plugin_hosts(objects)["gateway"])
    assert env["LOOMSTACK_GATEWAY_PLUGINS"] == "hello"
    assert "LOOMSTACK_GATEWAY_PLUGINS_REQUIRED" not in env


@pytest.mark.parametrize(
    ("plugins", "refusal"),
    [
        ({"enabled": ["Hello"]}, "does not match pattern"),
        ({"enabled": ["hello-world"]}, "does not match pattern"),
        ({"enabled": ["a" * 33]}, "does not match pattern"),
        ({"enabled": ["hello"], "required": ["1hello"]}, "does not match pattern"),
        ({"enabled": ["hello", "hello"]}, "items at 0 and 1 are equal"),
        ({"enabled": ["hello"], "required": ["aris"]}, '"aris", which is not in plugins.enabled'),
        ({"required": ["hello"]}, '"hello", which is not in plugins.enabled'),
    ],
)
def test_bad_plugin_values_are_refused(
    render_with: Callable[..., Objects], plugins: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(refusal)):
        render_with({"plugins": plugins})


# -- service authentication, mTLS, keys and limits (issue #10) ---------------------------------

# Every Loomstack service container; the migrations Job, PostgreSQL, Label Studio and the test
# pod are not services that sign or check caller identities.
SERVICE_COMPONENTS = ("gateway", "inference-api", "inference-engine", "curation", "training")
# gRPC servers: the environment prefix of their health-only port.
HEALTH_PORT_ENV = {
    "inference-api": "LOOMSTACK_INFERENCE_HEALTH_PORT",
    "inference-engine": "LOOMSTACK_INFERENCE_HEALTH_PORT",
    "curation": "LOOMSTACK_CURATION_HEALTH_PORT",
    "training": "LOOMSTACK_TRAINING_HEALTH_PORT",
}
TLS_FILES = {
    "LOOMSTACK_GRPC_TLS_CERT_FILE": "tls.crt",
    "LOOMSTACK_GRPC_TLS_KEY_FILE": "tls.key",
    "LOOMSTACK_GRPC_TLS_CA_FILE": "ca.crt",
}


def service_pods(objects: Objects) -> Iterator[tuple[PodOwner, dict[str, Any]]]:
    """(pod owner, its main container) of every Loomstack service Deployment."""
    for owner in pod_specs(objects):
        if owner.kind == "Deployment" and owner.labels["app.kubernetes.io/component"] in (
            SERVICE_COMPONENTS
        ):
            yield owner, owner.spec["containers"][0]


def mounted_file(owner: PodOwner, container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume a file path of the container lives on (asserting a read-only mount)."""
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1, f"{owner.name}: {path} is on no mount (or several)"
    assert mounts[0].get("readOnly") is True, f"{owner.name}: {path} is writable"
    volumes = {v["name"]: v for v in owner.spec["volumes"]}
    return volumes[mounts[0]["name"]]


def secret_items(volume: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(Secret, key, file) of a secret or projected volume."""
    if "secret" in volume:
        sources = [volume["secret"] | {"name": volume["secret"]["secretName"]}]
    else:
        sources = [s["secret"] for s in volume["projected"]["sources"]]
    return {(s["name"], i["key"], i["path"]) for s in sources for i in s["items"]}


def test_every_service_reads_one_service_secret_from_a_file(
    objects: Objects, values: dict[str, Any]
) -> None:
    """Each Loomstack service container gets `LOOMSTACK_SERVICE_SECRET_FILE`, a read-only file of
    one Secret, the same for all; nothing else mounts it or gets it as a variable."""
    auth = values["serviceAuth"]
    seen: set[tuple[str, str]] = set()
    components = set()
    for owner, container in service_pods(objects):
        components.add(owner.labels["app.kubernetes.io/component"])
        path = env_of(container)["LOOMSTACK_SERVICE_SECRET_FILE"]
        volume = mounted_file(owner, container, path)
        items = secret_items(volume)
        assert len(items) == 1, f"{owner.name}: mounts more of the Secret than the secret"
        ((secret, key, file),) = items
        assert path.endswith("/" + file) and key == auth["secretKey"]
        seen.add((secret, key))
    assert components >= {"gateway", "inference-api", "inference-engine"}
    assert len(seen) == 1, f"the services disagree about the service secret: {seen}"
    ((secret, key),) = seen
    if auth["existingSecret"]:
        assert secret == auth["existingSecret"]
        assert secret not in by_kind(objects, "Secret")
    else:
        generated = by_kind(objects, "Secret")[secret]
        assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        import base64

        assert len(base64.b64decode(generated["data"][key])) >= 48
    for owner in pod_specs(objects):
        if owner.labels["app.kubernetes.io/component"] in SERVICE_COMPONENTS:
            continue
        for container in containers(owner.spec):
            assert "LOOMSTACK_SERVICE_SECRET_FILE" not in env_names(container), owner.name
        volumes = [v for v in owner.spec.get("volumes", []) if "secret" in v or "projected" in v]
        assert all(secret not in {s for s, _, _ in secret_items(v)} for v in volumes), owner.name


def test_mutual_tls_only_when_asked(objects: Objects, values: dict[str, Any]) -> None:
    """mTLS: every service container reads its certificate, key and CA from read-only files of
    its Secret (a component's own or the shared one; the CA Secret), and each gRPC server also
    listens on a named plaintext `health` port, which its Service carries. Off: none of it."""
    m = values["serviceAuth"]["mtls"]
    for owner, container in service_pods(objects):
        component = owner.labels["app.kubernetes.io/component"]
        env = env_of(container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if not m["enabled"]:
            assert not set(TLS_FILES) & set(env), owner.name
            assert "health" not in ports and not any(k.endswith("_HEALTH_PORT") for k in env)
            assert "grpc-tls" not in {v["name"] for v in owner.spec["volumes"]}
            continue
        cert = m["componentSecrets"].get(component) or m["existingSecret"]
        ca = m["caSecret"] or cert
        ca_key = m["caKey"] if m["caSecret"] else "ca.crt"
        for variable, file in TLS_FILES.items():
            volume = mounted_file(owner, container, env[variable])
            assert env[variable].endswith("/" + file)
            expected = (ca, ca_key, file) if file == "ca.crt" else (cert, file, file)
            assert expected in secret_items(volume), f"{owner.name}: {variable}"
        if component in HEALTH_PORT_ENV:
            health = int(env[HEALTH_PORT_ENV[component]])
            assert ports["health"] == health != ports["grpc"]
            service = by_kind(objects, "Service")[owner.name]
            served = {p["name"]: p for p in service["spec"]["ports"]}
            assert served["health"]["port"] == health
            assert served["health"]["targetPort"] == "health"
        # Chat is forwarded to engines at their pod IPs: the forwarding side checks an engine's
        # certificate against one configured name instead.
        if component in ("inference-api", "inference-engine"):
            name = env["LOOMSTACK_INFERENCE_ENGINE_TLS_SERVER_NAME"]
            api = next(
                o.name for o, _ in service_pods(objects) if o.name.endswith("-inference-api")
            )
            default = api.removesuffix("-inference-api") + "-inference-engine"
            assert name == (m["engineServerName"] or default)
        else:
            assert "LOOMSTACK_INFERENCE_ENGINE_TLS_SERVER_NAME" not in env


def test_with_mtls_the_grpc_ports_admit_only_the_services(
    objects: Objects, values: dict[str, Any]
) -> None:
    """The test pod (no client certificate) reaches the health ports, never a gRPC port; the
    services reach both. Without mTLS it checks the gRPC ports, as before."""
    if not values["networkPolicy"]["enabled"]:
        return
    for owner, container in service_pods(objects):
        component = owner.labels["app.kubernetes.io/component"]
        if component not in HEALTH_PORT_ENV:
            continue
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        grpc_peers = set().union(
            *(peer_components(p) for _, p in ingress_rules_to(objects, component, ports["grpc"]))
        )
        assert "gateway" in grpc_peers
        if mtls_on(values):
            assert "test" not in grpc_peers, f"{component}: gRPC port open to the test pod"
            health_peers = set().union(
                *(
                    peer_components(p)
                    for _, p in ingress_rules_to(objects, component, ports["health"])
                )
            )
            assert {"test", "gateway"} <= health_peers
        else:
            assert "test" in grpc_peers


def test_mtls_needs_a_certificate_secret(render_with: Callable[..., Objects]) -> None:
    objects = render_with(
        {
            "serviceAuth": {
                "mtls": {"enabled": True, "existingSecret": "tls", "caSecret": "ca"},
            }
        }
    )
    assert any(o["kind"] == "Deployment" for o in objects)
    with pytest.raises(RuntimeError, match=r"serviceAuth\.mtls\.existingSecret"):
        render_with({"serviceAuth": {"mtls": {"enabled": True}}})


def decoded(secret: dict[str, Any], key: str) -> str:
    import base64

    return base64.b64decode(secret["data"][key]).decode()


API_KEY = re.compile(r"^sk-loomstack-[A-Za-z0-9]{40}$")


def test_the_generated_api_key_is_a_project_key(
    rendered: dict[str, Objects], render_with: Callable[..., Objects]
) -> None:
    """The chart's key belongs to project `default`; an admin key only when asked, as a second
    entry of the same list. The gateway reads the list from a read-only file."""
    objects = rendered[helm_chart.DEFAULTS]
    entries = decoded(by_kind(objects, "Secret")["loomstack-api-keys"], "api-keys").split(",")
    assert len(entries) == 1
    key, project = entries[0].split(":")
    assert API_KEY.match(key) and project == "default"

    objects = render_with({"gateway": {"apiKeys": {"generateAdminKey": True}}})
    entries = decoded(by_kind(objects, "Secret")["loomstack-api-keys"], "api-keys").split(",")
    assert [e.split(":")[1] for e in entries] == ["default", "*"]
    assert all(API_KEY.match(e.split(":")[0]) for e in entries)
    assert entries[0].split(":")[0] != entries[1].split(":")[0]


def test_the_gateway_reads_its_keys_from_a_file(objects: Objects, values: dict[str, Any]) -> None:
    keys = values["gateway"]["apiKeys"]
    owner, container = next(
        (o, c)
        for o, c in service_pods(objects)
        if o.labels["app.kubernetes.io/component"] == "gateway"
    )
    assert "LOOMSTACK_GATEWAY_API_KEYS" not in env_names(container)
    path = env_of(container)["LOOMSTACK_GATEWAY_API_KEYS_FILE"]
    (item,) = secret_items(mounted_file(owner, container, path))
    secret = keys["existingSecret"] or "loomstack-api-keys"
    assert item == (secret, keys["secretKey"], path.rsplit("/", 1)[1])
    assert (secret in by_kind(objects, "Secret")) == (not keys["existingSecret"])


def test_notes_say_which_key_is_which(helm: Any, tmp_path: Any) -> None:
    """NOTES.txt: the generated key is a `default` project key; with generateAdminKey it says how
    to read the admin key too."""
    import subprocess

    def notes(extra: list[str]) -> str:
        argv = [str(helm), "install", "loomstack", str(helm_chart.CHART), "--dry-run=client"]
        argv += ["--namespace", helm_chart.NAMESPACE, *extra]
        result = subprocess.run(argv, capture_output=True, text=True, check=True)
        return result.stdout.split("NOTES:", 1)[1]

    plain = notes([])
    assert "grep ':default$'" in plain and "not an admin key" in plain
    assert "No admin key was generated" in plain and "grep ':\\*$'" not in plain
    assert "allows 60 minutes by default" in plain
    admin = notes(
        ["--set", "gateway.apiKeys.generateAdminKey=true", "--set", "curation.enabled=true"]
    )
    assert "grep ':\\*$'" in admin and "No admin key" not in admin
    assert '"Basic auth"' in admin and "loomstack-curation-ml-backend" in admin


def test_gateway_limits_from_values(objects: Objects, values: dict[str, Any]) -> None:
    """Per-key requests per minute and concurrency, the JSON body limit and the counters' store
    (a URI, or a Secret's when it carries a password) reach the gateway's settings."""
    limits = values["gateway"]["limits"]
    _, container = next(
        (o, c)
        for o, c in service_pods(objects)
        if o.labels["app.kubernetes.io/component"] == "gateway"
    )
    env = env_of(container)
    assert env["LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE"] == str(limits["requestsPerMinute"])
    assert env["LOOMSTACK_GATEWAY_CONCURRENCY_LIMIT"] == str(limits["concurrentRequests"])
    assert env["LOOMSTACK_GATEWAY_MAX_JSON_BODY_BYTES"] == str(limits["maxJsonBodyBytes"])
    storage = limits["storage"]
    (ref,) = [e for e in container["env"] if e["name"] == "LOOMSTACK_GATEWAY_RATE_LIMIT_STORAGE"]
    if storage["existingSecret"]:
        assert ref["valueFrom"]["secretKeyRef"] == {
            "name": storage["existingSecret"],
            "key": storage["secretKey"],
        }
    else:
        assert ref["value"] == storage["uri"]


def test_gateway_limit_defaults(rendered: dict[str, Objects]) -> None:
    _, container = next(
        (o, c)
        for o, c in service_pods(rendered[helm_chart.DEFAULTS])
        if o.labels["app.kubernetes.io/component"] == "gateway"
    )
    env = env_of(container)
    assert env["LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE"] == "600"
    assert env["LOOMSTACK_GATEWAY_CONCURRENCY_LIMIT"] == "32"
    assert env["LOOMSTACK_GATEWAY_MAX_JSON_BODY_BYTES"] == "16777216"
    assert env["LOOMSTACK_GATEWAY_RATE_LIMIT_STORAGE"] == "memory://"


def test_large_limits_render_as_integers(render_with: Callable[..., Objects]) -> None:
    """Helm reads numbers as floats: 1e9 must still reach the service as `1000000000`."""
    objects = render_with(
        {"gateway": {"limits": {"requestsPerMinute": 10_000_000, "maxJsonBodyBytes": 10**9}}}
    )
    env = env_of(
        by_kind(objects, "Deployment")["loomstack-gateway"]["spec"]["template"]["spec"][
            "containers"
        ][0]
    )
    assert env["LOOMSTACK_GATEWAY_RATE_LIMIT_PER_MINUTE"] == "10000000"
    assert env["LOOMSTACK_GATEWAY_MAX_JSON_BODY_BYTES"] == "1000000000"


def test_curation_ml_backend_credentials(objects: Objects, values: dict[str, Any]) -> None:
    """Label Studio's basic auth for the ML backend: the user name from the same Secret whose
    password is a read-only file; the cap on tasks per predict call."""
    deployment = component_deployment(objects, "curation")
    if deployment is None:
        return
    ml = values["curation"]["mlBackend"]
    owner = next(o for o in pod_specs(objects) if o.name == deployment["metadata"]["name"])
    container = owner.spec["containers"][0]
    env = env_of(container)
    assert env["LOOMSTACK_CURATION_ML_BACKEND_MAX_TASKS"] == str(ml["maxTasksPerPredict"])
    (user,) = [e for e in container["env"] if e["name"] == "LOOMSTACK_CURATION_ML_BACKEND_USERNAME"]
    path = env["LOOMSTACK_CURATION_ML_BACKEND_PASSWORD_FILE"]
    (item,) = secret_items(mounted_file(owner, container, path))
    secret = ml["existingSecret"] or "loomstack-curation-ml-backend"
    user_key = ml["usernameKey"] if ml["existingSecret"] else "username"
    password_key = ml["passwordKey"] if ml["existingSecret"] else "password"
    assert user["valueFrom"]["secretKeyRef"] == {"name": secret, "key": user_key}
    assert item == (secret, password_key, path.rsplit("/", 1)[1])
    if not ml["existingSecret"]:
        generated = by_kind(objects, "Secret")[secret]
        assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert decoded(generated, "username") == "label-studio"
        assert len(decoded(generated, "password")) == 40


def test_curation_ml_backend_existing_secret(render_with: Callable[..., Objects]) -> None:
    objects = render_with(
        {
            "curation": {
                "enabled": True,
                "mlBackend": {
                    "existingSecret": "ls-ml",
                    "usernameKey": "user",
                    "passwordKey": "pass",
                    "maxTasksPerPredict": 8,
                },
            }
        }
    )
    assert "loomstack-curation-ml-backend" not in by_kind(objects, "Secret")
    container = component_deployment(objects, "curation")["spec"]["template"]["spec"]["containers"][
        0
    ]
    env = env_of(container)
    assert env["LOOMSTACK_CURATION_ML_BACKEND_PASSWORD_FILE"].endswith("/pass")
    assert env["LOOMSTACK_CURATION_ML_BACKEND_MAX_TASKS"] == "8"


def test_engines_bound_their_online_queue(objects: Objects, values: dict[str, Any]) -> None:
    for engine in engines(values):
        env = env_of(
            engine_deployment(objects, engine["name"])["spec"]["template"]["spec"]["containers"][0]
        )
        assert env["LOOMSTACK_INFERENCE_MAX_ONLINE_REQUESTS"] == str(engine["maxOnlineRequests"])


def test_loomstack_containers_set_only_real_settings(
    objects: Objects, values: dict[str, Any]
) -> None:
    """Every LOOMSTACK_* variable the chart gives the gateway and the inference roles is a setting
    of that service (curation and training are checked above)."""
    from loomstack_gateway.settings import GatewaySettings
    from loomstack_inference.settings import InferenceSettings

    known = {
        "gateway": setting_envs(GatewaySettings, "LOOMSTACK_GATEWAY_"),
        "inference-api": setting_envs(InferenceSettings, "LOOMSTACK_INFERENCE_"),
        "inference-engine": setting_envs(InferenceSettings, "LOOMSTACK_INFERENCE_"),
    }
    extra = {e["name"] for e in values["gateway"]["extraEnv"] + values["inference"]["extraEnv"]}
    for engine in engines(values):
        extra |= {e["name"] for e in engine["env"]}
    for owner, container in service_pods(objects):
        component = owner.labels["app.kubernetes.io/component"]
        if component not in known:
            continue
        names = {n for n in env_names(container) if n.startswith("LOOMSTACK_")} - extra
        assert names <= known[component], f"{owner.name}: not settings: {names - known[component]}"


def test_image_digests_reach_every_container(render_with: Callable[..., Objects]) -> None:
    """Every image the chart runs or starts (training Jobs too) can be pinned by digest."""
    digest = "sha256:" + "a" * 64
    image = {"image": {"digest": digest}}
    objects = render_with(
        {
            "gateway": image,
            "inference": {"image": {"digest": digest}, "engineDefaults": image},
            "postgresql": {"bundled": image},
            "labelStudio": {"mode": "bundled", "bundled": image},
            "curation": {"enabled": True, **image},
            "training": {
                "enabled": True,
                **image,
                "job": image,
                "workVolume": {"existingClaim": "work"},
            },
        }
    )
    images = [c["image"] for _, c in all_containers(objects)]
    assert images and all(i.endswith("@" + digest) for i in images), images
    training = component_deployment(objects, "training")
    env = env_of(training["spec"]["template"]["spec"]["containers"][0])
    assert env["LOOMSTACK_TRAINING_KUBERNETES_IMAGE"].endswith("@" + digest)


# Secrets still handed over as environment variables, because the program reads them nowhere
# else (each is also a checkov CKV_K8S_35 exception annotated on its workload).
SECRET_ENV_ALLOWED = {
    "LOOMSTACK_INFERENCE_DATABASE_URL",
    "LOOMSTACK_CURATION_DATABASE_URL",
    "LOOMSTACK_TRAINING_DATABASE_URL",
    "LOOMSTACK_CURATION_WEBHOOK_SECRET",
    "LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN",
    "LOOMSTACK_CURATION_ML_BACKEND_USERNAME",
    "LOOMSTACK_GATEWAY_RATE_LIMIT_STORAGE",
    "LABEL_STUDIO_PASSWORD",
    "LABEL_STUDIO_USER_TOKEN",
}


def test_secrets_are_files_where_the_program_allows(
    objects: Objects, values: dict[str, Any]
) -> None:
    """API keys, the service secret, TLS keys, the ML backend password, the Hugging Face token
    (HF_TOKEN_PATH) and PostgreSQL's password (POSTGRES_PASSWORD_FILE) are mounted files; only
    the variables in SECRET_ENV_ALLOWED come from a secretKeyRef (and the plugins' settings in
    `plugins.env`, which plugins read from the environment)."""
    allowed = SECRET_ENV_ALLOWED | {e["name"] for e in values["plugins"]["env"]}
    for where, container in all_containers(objects):
        for env in container.get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                assert env["name"] in allowed, f"{where}: {env['name']} from a Secret"
        assert "envFrom" not in container, where


def test_gated_model_token_and_database_password_are_files(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["02-one-gpu-model"]
    owner = next(o for o in pod_specs(objects) if o.name == "loomstack-engine-llama-8b")
    container = owner.spec["containers"][0]
    path = env_of(container)["HF_TOKEN_PATH"]
    assert secret_items(mounted_file(owner, container, path)) == {("hf-token", "token", "token")}
    owner = next(o for o in pod_specs(objects) if o.kind == "StatefulSet")
    container = owner.spec["containers"][0]
    path = env_of(container)["POSTGRES_PASSWORD_FILE"]
    items = secret_items(mounted_file(owner, container, path))
    assert items == {("loomstack-postgresql", "password", "password")}


# -- the policy scanner's exceptions (checkov, run by `make helm-lint`) --------------------------

# Every check the chart makes a deliberate exception to; a new one needs a reason here too.
SCAN_EXCEPTIONS = {
    "CKV_K8S_8",  # liveness probe: only the run-once helm test pod
    "CKV_K8S_9",  # readiness probe: the same
    "CKV_K8S_11",  # CPU limits: requested, not capped (CFS throttling)
    "CKV_K8S_15",  # imagePullPolicy Always: pinned images, IfNotPresent
    "CKV_K8S_35",  # secrets as variables: only where the program reads them nowhere else
    "CKV_K8S_38",  # API token mounted: the gateway with admin on, the training service
    "CKV_K8S_43",  # image digests: supported everywhere, tags by default
}


def scan_skips(obj: dict[str, Any]) -> dict[str, str]:
    """check id → reason of every checkov skip annotation on an object."""
    skips = {}
    for key, value in (obj["metadata"].get("annotations") or {}).items():
        if "checkov.io/skip" not in key:
            continue
        match = helm_chart.SKIP_ANNOTATION.match(key)
        assert match, f"{obj['metadata']['name']}: {key} is not checkov.io/skip-<CHECK>"
        # checkov splits the value at "=": a second one would break its parser.
        assert value.count("=") == 1, f"{obj['metadata']['name']}: {key}: {value!r}"
        check, reason = value.split("=")
        assert check == match.group(1), f"{obj['metadata']['name']}: {key} skips {check}"
        skips[check] = reason
    return skips


def test_every_scan_exception_names_its_reason(objects: Objects) -> None:
    """Each skip annotation is `checkov.io/skip-<CHECK>: "<CHECK>=<reason>"`, with a reason of
    a sentence, for a check the chart knowingly excepts."""
    for obj in objects:
        for check, reason in scan_skips(obj).items():
            where = f"{obj['kind']}/{obj['metadata']['name']} {check}"
            assert check in SCAN_EXCEPTIONS, f"{where}: an exception nobody reviewed"
            assert len(reason.split()) >= 8 and reason.strip() == reason, f"{where}: {reason!r}"


def test_scan_exceptions_are_there_only_while_they_apply(objects: Objects) -> None:
    """An exception sits on a workload exactly while the thing it excuses is there: a tag
    without digest, a container without CPU limit, a pull policy other than Always, a mounted
    API token, a secret as a variable (each one named), a run-once pod."""
    for owner in pod_specs(objects):
        obj = next(
            o for o in objects if o["kind"] == owner.kind and o["metadata"]["name"] == owner.name
        )
        skips = scan_skips(obj)
        where = f"{owner.kind}/{owner.name}"
        found = containers(owner.spec)
        assert ("CKV_K8S_43" in skips) == any("@sha256:" not in c["image"] for c in found), where
        no_cpu_limit = any("cpu" not in c["resources"].get("limits", {}) for c in found)
        assert ("CKV_K8S_11" in skips) == no_cpu_limit, where
        not_always = any(c.get("imagePullPolicy") != "Always" for c in found)
        assert ("CKV_K8S_15" in skips) == not_always, where
        token = owner.spec.get("automountServiceAccountToken") is not False
        assert ("CKV_K8S_38" in skips) == token, where
        secret_env = {
            e["name"]
            for c in found
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert ("CKV_K8S_35" in skips) == bool(secret_env), where
        for name in secret_env:
            assert name in skips["CKV_K8S_35"], f"{where}: the exception does not name {name}"
        run_once = owner.kind == "Pod" and owner.spec.get("restartPolicy") == "Never"
        assert ("CKV_K8S_8" in skips) == ("CKV_K8S_9" in skips) == run_once, where
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job", "Pod"):
            assert not scan_skips(obj), f"{obj['kind']}/{obj['metadata']['name']}"


def test_the_scan_fails_on_an_unexplained_finding(
    rendered: dict[str, Objects], tmp_path: Any
) -> None:
    """The real checkov over the default gateway Deployment without its annotations reports the
    findings those annotations explain (and `helm_chart.py scan` fails on any failed check)."""
    if not helm_chart.CHECKOV.is_file():
        pytest.fail(f"{helm_chart.CHECKOV} is missing: run `make policy-scanner`")
    import copy

    import yaml

    objects = rendered[helm_chart.DEFAULTS]
    gateway = copy.deepcopy(by_kind(objects, "Deployment")["loomstack-gateway"])
    # Its NetworkPolicy too: checkov's graph check CKV2_K8S_6 wants one for every pod.
    policy = by_kind(objects, "NetworkPolicy")["loomstack-gateway"]
    explained = set(scan_skips(gateway))
    assert {"CKV_K8S_11", "CKV_K8S_38", "CKV_K8S_43"} <= explained
    (tmp_path / "explained").mkdir()
    (tmp_path / "explained" / "m.yaml").write_text(yaml.safe_dump_all([gateway, policy]))
    scan = helm_chart.run_checkov(tmp_path / "explained")
    assert not scan.failed and {c["check_id"] for c in scan.skipped} == explained

    del gateway["metadata"]["annotations"]
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "m.yaml").write_text(yaml.safe_dump_all([gateway, policy]))
    scan = helm_chart.run_checkov(tmp_path / "bare")
    assert {c["check_id"] for c in scan.failed} == explained and not scan.skipped
