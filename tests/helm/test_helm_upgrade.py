"""Generated secrets across an upgrade: what the chart's `lookup` finds in the cluster is kept.

No cluster runs here, so `helm template --dry-run=server` renders against a stand-in API server
(kube_discovery_standin.py) that serves discovery and the Secrets an earlier release left; the
chart's templates and the real helm do the rest. This is where the API key rules are shown: the
chart's key is a `default` project key, keys added by hand survive, and the admin key the chart
used to generate is dropped unless `gateway.apiKeys.generateAdminKey` asks for one.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import helm_chart
from kube_discovery_standin import StandinCluster, standin_cluster

OLD_ADMIN = "sk-loomstack-" + "A" * 40
TEAM = "sk-team-a-by-hand"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[StandinCluster]:
    with standin_cluster(tmp_path, helm_chart.NAMESPACE, helm_chart.RELEASE) as running:
        yield running


@pytest.fixture
def upgrade(
    helm: Path, cluster: StandinCluster, tmp_path: Path
) -> Callable[..., dict[str, dict[str, str]]]:
    """Renders the chart against the stand-in; returns Secret name -> decoded data."""

    def render(values: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values or {}))
        argv = [str(helm), "template", helm_chart.RELEASE, str(helm_chart.CHART)]
        argv += ["--namespace", helm_chart.NAMESPACE, "--values", str(path)]
        # Server-side: lookup asks the (stand-in) API; it has no OpenAPI to validate against.
        argv += ["--dry-run=server", "--disable-openapi-validation"]
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        assert result.returncode == 0, result.stderr
        secrets = {}
        for doc in yaml.safe_load_all(result.stdout):
            if doc and doc["kind"] == "Secret":
                data = doc.get("data", {})
                secrets[doc["metadata"]["name"]] = {
                    k: base64.b64decode(v).decode() for k, v in data.items()
                }
        return secrets

    return render


def keys_of(secrets: dict[str, dict[str, str]]) -> list[str]:
    return secrets["loomstack-api-keys"]["api-keys"].split(",")


def test_standin_renders_a_first_install_with_fresh_secrets(
    upgrade: Callable[..., dict[str, dict[str, str]]], cluster: StandinCluster
) -> None:
    secrets = upgrade()
    (entry,) = keys_of(secrets)
    assert entry.endswith(":default")
    assert len(secrets["loomstack-service-auth"]["service-secret"]) == 64
    lookups = [r for r in cluster.requests if "/secrets/loomstack-api-keys" in r]
    assert lookups, "helm never asked the stand-in for the existing Secret"


def test_standin_upgrade_drops_the_old_generated_admin_key(
    upgrade: Callable[..., dict[str, dict[str, str]]], cluster: StandinCluster
) -> None:
    """A release from before project keys had `sk-loomstack-...:*`: it goes, keys added by hand
    stay, and a `default` key comes first."""
    cluster.secrets["loomstack-api-keys"] = {"api-keys": b64(f"{OLD_ADMIN}:*,{TEAM}:team-a")}
    entries = keys_of(upgrade())
    assert len(entries) == 2 and entries[1] == f"{TEAM}:team-a"
    key, project = entries[0].split(":")
    assert project == "default" and key != OLD_ADMIN and key.startswith("sk-loomstack-")
    assert all(not e.endswith(":*") for e in entries)


def test_standin_upgrade_keeps_the_admin_key_when_asked(
    upgrade: Callable[..., dict[str, dict[str, str]]], cluster: StandinCluster
) -> None:
    cluster.secrets["loomstack-api-keys"] = {"api-keys": b64(f"{OLD_ADMIN}:*,{TEAM}:team-a")}
    entries = keys_of(upgrade({"gateway": {"apiKeys": {"generateAdminKey": True}}}))
    assert entries[1:] == [f"{OLD_ADMIN}:*", f"{TEAM}:team-a"]
    assert entries[0].endswith(":default")


def test_standin_upgrade_keeps_every_key_it_finds(
    upgrade: Callable[..., dict[str, dict[str, str]]], cluster: StandinCluster
) -> None:
    """A current list is left exactly as it is, a hand-made admin key included."""
    current = f"sk-loomstack-{'B' * 40}:default,{TEAM}:team-a,sk-ops-by-hand:*"
    cluster.secrets["loomstack-api-keys"] = {"api-keys": b64(current)}
    assert ",".join(keys_of(upgrade())) == current


def test_standin_upgrade_keeps_the_service_secret_and_ml_backend_credentials(
    upgrade: Callable[..., dict[str, dict[str, str]]], cluster: StandinCluster
) -> None:
    service_secret = "s" * 64
    cluster.secrets["loomstack-service-auth"] = {"service-secret": b64(service_secret)}
    cluster.secrets["loomstack-curation-ml-backend"] = {
        "username": b64("label-studio"),
        "password": b64("p" * 40),
    }
    secrets = upgrade({"curation": {"enabled": True}})
    assert secrets["loomstack-service-auth"]["service-secret"] == service_secret
    assert secrets["loomstack-curation-ml-backend"] == {
        "username": "label-studio",
        "password": "p" * 40,
    }
