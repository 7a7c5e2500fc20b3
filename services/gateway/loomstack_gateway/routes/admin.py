"""`/admin/services`: each component's replicas, restarts, failures and GPUs; restart; scale.

Admin API keys only (project `*`). Two backends answer the same routes with the same shapes:
`kubernetes` (admin_kubernetes.py: this release's Deployments through the Kubernetes API) and
`local` (admin_local.py: the embedded default's processes). They replace the seed's
`/admin/systemd/*` routes, which ran `sudo systemctl` without authentication.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from loomstack_kit.errors import FailedPrecondition, InvalidArgument, PermissionDenied

from ..auth import caller_of
from ..responses import OrjsonResponse
from ..settings import GatewaySettings


class ServiceAdmin(Protocol):
    """What both backends do."""

    backend: str

    async def list_services(self) -> dict[str, Any]: ...

    async def restart(self, name: str) -> dict[str, Any]: ...

    async def scale(self, name: str, replicas: int) -> dict[str, Any]: ...


def open_admin(settings: GatewaySettings) -> ServiceAdmin:
    """The backend `admin_backend` names."""
    if settings.admin_backend == "kubernetes":
        from ..admin_kubernetes import KubernetesAdmin

        return KubernetesAdmin(settings)
    if settings.admin_backend == "local":
        from ..admin_local import LocalAdmin

        return LocalAdmin(settings)
    if settings.admin_backend == "none":
        return DisabledAdmin()
    raise ValueError(
        f"LOOMSTACK_GATEWAY_ADMIN_BACKEND must be `local`, `kubernetes` or `none`, "
        f"not {settings.admin_backend!r}"
    )


class DisabledAdmin:
    """`none`: the routes exist and say why they do nothing (the chart's gateway.admin.enabled)."""

    backend = "none"

    def _off(self) -> FailedPrecondition:
        return FailedPrecondition(
            "service administration is off for this gateway (LOOMSTACK_GATEWAY_ADMIN_BACKEND=none; "
            "the chart's gateway.admin.enabled)",
            code="admin_disabled",
        )

    async def list_services(self) -> dict[str, Any]:
        raise self._off()

    async def restart(self, name: str) -> dict[str, Any]:
        raise self._off()

    async def scale(self, name: str, replicas: int) -> dict[str, Any]:
        raise self._off()


class ScaleRequest(BaseModel):
    """Body of POST /admin/services/{name}/scale."""

    replicas: int = Field(ge=0, description="Desired number of replicas.")


def _require_admin(request: Request) -> None:
    # A router dependency: FastAPI solves it before it validates the body, so a project key is
    # refused before anything of its request is looked at (a bad body would get 400, not 403).
    if caller_of(request).project is not None:
        raise PermissionDenied(
            "/admin needs an admin API key (one whose project is `*`)", code="admin_only"
        )


def admin_router(admin: ServiceAdmin) -> APIRouter:
    """The /admin/services routes over one backend."""
    router = APIRouter(
        prefix="/admin/services", tags=["admin"], dependencies=[Depends(_require_admin)]
    )

    @router.get("", summary="Every component: replicas, restarts, failures, GPUs")
    async def list_services() -> Response:
        return OrjsonResponse(await admin.list_services())

    @router.post("/{name}/restart", summary="Restart a component (a rollout restart)")
    async def restart(name: str) -> Response:
        return OrjsonResponse(await admin.restart(_checked(name)))

    @router.post("/{name}/scale", summary="Set a component's number of replicas")
    async def scale(name: str, body: ScaleRequest) -> Response:
        return OrjsonResponse(await admin.scale(_checked(name), body.replicas))

    return router


def _checked(name: str) -> str:
    """A Kubernetes object name (DNS subdomain rules, the strictest both backends share)."""
    if not name or len(name) > 253 or not all(c.isalnum() or c in "-." for c in name):
        raise InvalidArgument(f"invalid service name {name!r}", param="name")
    if name != name.lower():
        raise InvalidArgument(f"invalid service name {name!r}: lower case only", param="name")
    return name
