"""The one way a service reaches the Kubernetes API: the official client, configured from the
pod's ServiceAccount (in-cluster) or from a kubeconfig file. `kubernetes` is imported lazily:
only the services that talk to a cluster install it."""

from __future__ import annotations

from typing import Any

from .errors import Unavailable


def api_client(kubeconfig: str, *, who: str, kubeconfig_setting: str) -> Any:
    """An `ApiClient`; no configuration is a clear `Unavailable` naming how to give one.

    ``who`` names the service in the message ("the gateway"), ``kubeconfig_setting`` the
    environment variable that points it at a kubeconfig.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise Unavailable(
            f"no Kubernetes API configuration: {exc} (run {who} in the cluster with the "
            f"chart's ServiceAccount, or set {kubeconfig_setting})",
            code="kubernetes_unconfigured",
        ) from exc
    return client.ApiClient(configuration)
