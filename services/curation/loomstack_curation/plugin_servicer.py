"""The PluginService servicer: the plugins this service hosts, and their failed deliveries
(admin only: a delivery may belong to any project)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from loomstack.curation.v1 import plugins_pb2, plugins_pb2_grpc
from loomstack_kit.errors import InvalidArgument, PermissionDenied
from loomstack_kit.identity import project_of
from loomstack_kit.plugins import PluginStatus

from .plugin_deliveries import Delivery, DeliveryStatus, PluginDeliveries

_STATE = {
    "loaded": plugins_pb2.PLUGIN_STATE_LOADED,
    "failed": plugins_pb2.PLUGIN_STATE_FAILED,
    "disabled": plugins_pb2.PLUGIN_STATE_DISABLED,
}
_STATUS = {
    DeliveryStatus.RETRYING: plugins_pb2.PLUGIN_DELIVERY_STATUS_RETRYING,
    DeliveryStatus.DEAD: plugins_pb2.PLUGIN_DELIVERY_STATUS_DEAD,
}
_STATUS_NAME: dict[int, str] = {int(v): k.value for k, v in _STATUS.items()}
MAX_PAGE = 100


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def plugin_to_proto(status: PluginStatus) -> Any:
    """One plugin's status as the API shows it."""
    return plugins_pb2.Plugin(
        name=status.name,
        state=_STATE[status.state],
        version=status.version,
        description=status.description,
        reason=status.reason,
        required=status.required,
        contributions=[
            plugins_pb2.PluginContribution(type=kind, names=list(names))
            for kind, names in sorted(status.contributions.items())
        ],
    )


def delivery_to_proto(delivery: Delivery) -> Any:
    """One failed delivery as the API shows it."""
    event = delivery.event
    return plugins_pb2.PluginDelivery(
        id=delivery.id,
        plugin=delivery.plugin,
        handler=delivery.handler,
        feed=event.feed,
        sequence=event.sequence,
        event_type=event.type,
        project=event.project,
        data_json=json.dumps(dict(event.data), sort_keys=True, default=str),
        status=_STATUS[delivery.status],
        attempts=delivery.attempts,
        error=delivery.error,
        next_attempt_time=_ts(delivery.next_attempt_at),
        create_time=_ts(delivery.created_at),
        update_time=_ts(delivery.updated_at),
    )


def _admin_only(context: grpc.aio.ServicerContext) -> None:
    if project_of(context) is not None:
        raise PermissionDenied(
            "plugin deliveries are for an admin API key (one whose project is `*`): they may "
            "belong to any project",
            code="admin_only",
        )


class PluginServicer(plugins_pb2_grpc.PluginServiceServicer):
    """ListPlugins for everyone; the deliveries for admins."""

    def __init__(
        self, statuses: Callable[[], Sequence[PluginStatus]], deliveries: PluginDeliveries
    ) -> None:
        self.statuses = statuses
        self.deliveries = deliveries

    async def ListPlugins(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return plugins_pb2.ListPluginsResponse(
            plugins=[plugin_to_proto(s) for s in sorted(self.statuses(), key=lambda s: s.name)]
        )

    async def ListPluginDeliveries(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _admin_only(context)
        size = request.page_size or 20
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be 1 to {MAX_PAGE}", param="page_size")
        token = request.page_token
        if token and not token.isdigit():
            raise InvalidArgument("page_token is not one this API gave", param="page_token")
        found = await asyncio.to_thread(
            self.deliveries.list,
            _STATUS_NAME.get(int(request.status), ""),
            request.plugin,
            size + 1,
            int(token or 0),
        )
        page = found[:size]
        return plugins_pb2.ListPluginDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in page],
            next_page_token=str(page[-1].id) if len(found) > size else "",
        )

    async def RetryPluginDelivery(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _admin_only(context)
        if request.delivery_id <= 0:
            raise InvalidArgument("delivery_id must be a delivery's id", param="delivery_id")
        delivery = await asyncio.to_thread(self.deliveries.retry, request.delivery_id)
        return delivery_to_proto(delivery)
