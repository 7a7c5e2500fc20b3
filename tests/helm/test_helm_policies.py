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
from helm_chart import containers, engines, load_values, pod_specs

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


def test_every_grpc_container_has_native_grpc_probes(objects: Objects) -> None:
    """startup/liveness/readiness: `grpc:` probes on the numeric gRPC port, the kit's names."""
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
                assert grpc["port"] == ports["grpc"], f"{where}: {probe} probes another port"
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


def test_helm_test_checks_the_gateway_and_every_grpc_service(objects: Objects) -> None:
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert len(pods) == 1 and pods[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pods[0]["spec"]["containers"][0]["args"]
    assert any(a.startswith("http=") and a.endswith("/readyz") for a in args)
    grpc_targets = {a.removeprefix("grpc=") for a in args if a.startswith("grpc=")}
    for service in by_kind(objects, "Service").values():
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        if "grpc" in ports:
            assert f"{service['metadata']['name']}:{ports['grpc']}" in grpc_targets
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
    """The environment variable of every field of a pydantic-settings class."""
    return {f"{prefix}{name.upper()}" for name in settings_class.model_fields}


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
    assert ports == {"grpc": c["port"], "http": c["httpPort"]}
    for probe, service in GRPC_HEALTH_NAMES.items():
        assert container[probe]["grpc"] == {"port": c["port"], "service": service}
    names = env_names(container) - {"HOME"}
    known = setting_envs(CurationSettings, "LOOMSTACK_CURATION_")
    extra = {e["name"] for e in c["extraEnv"]}
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
    assert images["migrate"].split("/")[-1].startswith("inference:")
    for service in ("curation", "training"):
        step = f"migrate-{service}"
        assert (step in images) == values[service]["enabled"]
        if values[service]["enabled"]:
            assert images[step].split("/")[-1].startswith(f"{service}:")
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
