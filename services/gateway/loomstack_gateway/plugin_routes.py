"""The plugins' HTTP routes: each enabled plugin's `Routes` mounted under its prefix
(`/v1/plugins/<name>` unless it names one), behind the same layers as every route (API keys,
rate and concurrency limits, body limits, request ids, OpenAI-shaped errors).

A plugin's route builder gets a `RouteContext`: the gateway's channels to the services and
the signed metadata of a request's caller, so its calls act for the caller's project. A
builder that raises, or a prefix that would cover a core route, leaves the plugin's routes
out (reported as failed) unless the plugin is required.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Literal

from fastapi import FastAPI
from starlette.requests import Request

from loomstack_kit.identity import Metadata
from loomstack_kit.plugins import PluginError, PluginSet, PluginStatus

from .auth import caller_of
from .upstream import Curation, Inference, Training

log = logging.getLogger(__name__)

# Core paths a plugin prefix may not cover (nor be covered by).
RESERVED = ("/v1/plugins", "/v1/plugin_deliveries")


class GatewayRouteContext:
    """The kit's RouteContext for one plugin."""

    def __init__(
        self,
        plugin: str,
        inference: Inference,
        curation: Curation,
        training: Training,
        timeout: float,
    ) -> None:
        self.plugin = plugin
        self.timeout = timeout
        self._upstreams = {"inference": inference, "curation": curation, "training": training}

    def channel(self, service: Literal["inference", "curation", "training"]) -> Any:
        """The open grpc.aio channel to a service (call it inside a route, after start)."""
        return self._upstreams[service].channel

    def metadata(self, request: Request) -> Metadata:
        """The signed identity of the request's caller."""
        return caller_of(request).metadata


def _clash(prefix: str, paths: list[str]) -> str | None:
    if prefix in RESERVED:
        return prefix
    for path in paths:
        if path == prefix or path.startswith(prefix + "/") or prefix.startswith(path + "/"):
            if path.startswith("/v1/plugins/") and path != prefix:
                continue
            return path
    return None


def mount_plugin_routes(
    app: FastAPI,
    plugins: PluginSet,
    *,
    inference: Inference,
    curation: Curation,
    training: Training,
    timeout: float,
    required: frozenset[str] = frozenset(),
) -> list[PluginStatus]:
    """Mounts every loaded plugin's routes; returns the statuses with the failures marked."""
    statuses = list(plugins.statuses)
    for plugin in plugins:
        if plugin.routes is None:
            continue
        prefix = plugin.route_prefix
        core = [getattr(r, "path", "") for r in app.routes]
        try:
            taken = _clash(prefix, core)
            if taken is not None:
                raise ValueError(f"its route prefix {prefix!r} covers the route {taken!r}")
            router = plugin.routes.build(
                GatewayRouteContext(plugin.name, inference, curation, training, timeout)
            )
            app.include_router(router, prefix=prefix, tags=[f"plugin: {plugin.name}"])
        except Exception as exc:  # plugin code
            reason = f"its routes were not mounted: {type(exc).__name__}: {exc}"
            log.error("plugin left out", extra={"plugin": plugin.name, "reason": reason})
            if plugin.name in required:
                raise PluginError(f"required plugin {plugin.name!r}: {reason}") from exc
            statuses = [
                replace(s, state="failed", reason=reason, contributions={})
                if s.name == plugin.name
                else s
                for s in statuses
            ]
            continue
        log.info("plugin routes mounted", extra={"plugin": plugin.name, "prefix": prefix})
    return statuses
