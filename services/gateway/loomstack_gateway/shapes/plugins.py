"""The shapes of `/v1/plugins` and `/v1/plugin_deliveries`: Loomstack's own objects in OpenAI's
style (`object`, unix-second timestamps).

A plugin is listed once, merged over the services that know it: `services` says where it is
loaded, failed (with the reason) or disabled; `state` is `failed` if it failed anywhere,
`loaded` if it is loaded somewhere, else `disabled`; `contributions` joins what each service
reported, by type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from loomstack.curation.v1 import plugins_pb2
from loomstack_kit.plugins import PluginStatus

from .common import seconds

_STATE = {
    plugins_pb2.PLUGIN_STATE_LOADED: "loaded",
    plugins_pb2.PLUGIN_STATE_FAILED: "failed",
    plugins_pb2.PLUGIN_STATE_DISABLED: "disabled",
}
_DELIVERY_STATUS = {
    plugins_pb2.PLUGIN_DELIVERY_STATUS_RETRYING: "retrying",
    plugins_pb2.PLUGIN_DELIVERY_STATUS_DEAD: "dead",
}
DELIVERY_STATUS_VALUE = {v: k for k, v in _DELIVERY_STATUS.items()}


def status_from_proto(msg: Any) -> PluginStatus:
    """A service's ListPlugins entry as a status."""
    return PluginStatus(
        name=msg.name,
        state=_STATE.get(msg.state, "failed"),  # type: ignore[arg-type]
        version=msg.version,
        description=msg.description,
        reason=msg.reason,
        required=msg.required,
        contributions={c.type: list(c.names) for c in msg.contributions},
    )


def _overall(states: Iterable[str]) -> str:
    found = set(states)
    if "failed" in found:
        return "failed"
    return "loaded" if "loaded" in found else "disabled"


def plugin_objects(by_service: Mapping[str, Iterable[PluginStatus]]) -> list[dict[str, Any]]:
    """Every plugin any service knows, by name."""
    merged: dict[str, dict[str, PluginStatus]] = {}
    for service, statuses in by_service.items():
        for status in statuses:
            merged.setdefault(status.name, {})[service] = status
    objects = []
    for name in sorted(merged):
        per = merged[name]
        contributions: dict[str, list[str]] = {}
        for status in per.values():
            for kind, names in status.contributions.items():
                have = contributions.setdefault(kind, [])
                have += [n for n in names if n not in have]
        known = next((s for s in per.values() if s.version), None)
        objects.append(
            {
                "object": "plugin",
                "id": name,
                "version": known.version if known else None,
                "description": known.description if known else "",
                "state": _overall(s.state for s in per.values()),
                "enabled": any(s.state != "disabled" for s in per.values()),
                "required": any(s.required for s in per.values()),
                "contributions": contributions,
                "services": {
                    service: {"state": s.state, "reason": s.reason or None}
                    for service, s in sorted(per.items())
                },
            }
        )
    return objects


def delivery_object(msg: Any) -> dict[str, Any]:
    """A failed delivery of a plugin handler."""
    return {
        "object": "plugin.delivery",
        "id": msg.id,
        "plugin": msg.plugin,
        "handler": msg.handler,
        "feed": msg.feed,
        "sequence": msg.sequence,
        "event_type": msg.event_type,
        "project": msg.project,
        "data": json.loads(msg.data_json or "{}"),
        "status": _DELIVERY_STATUS.get(msg.status, "unknown"),
        "attempts": msg.attempts,
        "error": msg.error or None,
        "next_attempt_at": seconds(msg, "next_attempt_time"),
        "created_at": seconds(msg, "create_time"),
        "updated_at": seconds(msg, "update_time"),
    }
