"""`/v1/plugins`: the plugins every service hosts, merged (shapes/plugins.py); and
`/v1/plugin_deliveries`: the events plugin result handlers failed on, for an admin to list and
retry (the curation service refuses project keys)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from loomstack.curation.v1 import plugins_pb2
from loomstack_kit.list_page import page
from loomstack_kit.plugins import PluginStatus

from ..auth import caller_of
from ..request_fields import PositiveInt64
from ..responses import OrjsonResponse
from ..settings import GatewaySettings
from ..shapes.plugins import (
    DELIVERY_STATUS_VALUE,
    delivery_object,
    plugin_objects,
    status_from_proto,
)
from ..upstream import Curation


def plugins_router(
    curation: Curation, gateway_statuses: Sequence[PluginStatus], settings: GatewaySettings
) -> APIRouter:
    """The plugin list and the deliveries routes."""
    router = APIRouter(tags=["plugins"])
    timeout = settings.upstream_timeout_seconds

    @router.get("/v1/plugins", summary="List the plugins and what each contributes")
    async def list_plugins(request: Request) -> Response:
        resp = await curation.plugins.ListPlugins(
            plugins_pb2.ListPluginsRequest(),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        objects = plugin_objects(
            {
                "gateway": gateway_statuses,
                "curation": [status_from_proto(p) for p in resp.plugins],
            }
        )
        return OrjsonResponse({"object": "list", "data": objects})

    @router.get(
        "/v1/plugin_deliveries",
        summary="List the events plugin handlers failed on (admin)",
        tags=["admin"],
    )
    async def list_deliveries(
        request: Request,
        status: Literal["retrying", "dead"] | None = None,
        plugin: str = "",
        after: Annotated[PositiveInt64 | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        resp = await curation.plugins.ListPluginDeliveries(
            plugins_pb2.ListPluginDeliveriesRequest(
                status=DELIVERY_STATUS_VALUE.get(status or "", 0),  # type: ignore[arg-type]
                plugin=plugin,
                page_size=limit,
                page_token="" if after is None else str(after),
            ),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        items = [delivery_object(d) for d in resp.deliveries]
        return OrjsonResponse(page(items, bool(resp.next_page_token)))

    @router.post(
        "/v1/plugin_deliveries/{delivery_id}/retry",
        summary="Deliver a dead-lettered event again (admin)",
        tags=["admin"],
    )
    async def retry_delivery(request: Request, delivery_id: PositiveInt64) -> Response:
        resp = await curation.plugins.RetryPluginDelivery(
            plugins_pb2.RetryPluginDeliveryRequest(delivery_id=delivery_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(delivery_object(resp))

    return router
