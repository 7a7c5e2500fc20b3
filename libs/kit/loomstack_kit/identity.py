"""Who is calling: the project the gateway authenticated, carried in gRPC metadata.

Inside the cluster only the gateway (and other services) can reach a service (NetworkPolicy),
so services trust these headers. An admin key is sent as project `*` and sees every project.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

PROJECT_KEY = "x-loomstack-project"
# Set by services calling services (never by the gateway, which forwards no client headers):
# such callers may store system files, e.g. the training service's `fine-tune-results`.
SERVICE_KEY = "x-loomstack-service"
ALL_PROJECTS = "*"
DEFAULT_PROJECT = "default"


def project_metadata(project: str | None) -> Sequence[tuple[str, str]]:
    """Call metadata for a project (None = admin, all projects)."""
    return ((PROJECT_KEY, project if project is not None else ALL_PROJECTS),)


def project_of(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's project; None for an admin caller. Missing = the default project."""
    for key, value in context.invocation_metadata() or ():
        if key == PROJECT_KEY:
            return None if value == ALL_PROJECTS else str(value)
    return DEFAULT_PROJECT


def service_metadata(project: str | None, service: str) -> Sequence[tuple[str, str]]:
    """Call metadata of a service acting for a project."""
    return (*project_metadata(project), (SERVICE_KEY, service))


def calling_service(context: grpc.aio.ServicerContext) -> str | None:
    """The calling service's name, None for calls that came through the gateway."""
    for key, value in context.invocation_metadata() or ():
        if key == SERVICE_KEY:
            return str(value)
    return None


def owner_project(project: str | None) -> str:
    """The project new objects are recorded under (admins create in the default project)."""
    return project if project is not None else DEFAULT_PROJECT
