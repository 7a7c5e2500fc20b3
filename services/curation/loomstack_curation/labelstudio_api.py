"""Label Studio as the curation service reaches it: the SDK client, the REST calls made beside
the SDK (task pages, export, import, task deletion: plain JSON, one sender), what a failure
means (unreachable or overloaded: the retryable Unavailable; another refusal:
FailedPrecondition), and the webhook events we subscribe to with the header carrying our
secret (projects.py registers the webhook, webhook.py handles what arrives).

It imports nothing else from the package, so every module that talks to Label Studio can use it
without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import orjson
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from loomstack_kit.errors import FailedPrecondition, Unavailable

SECRET_HEADER = "X-Loomstack-Webhook-Secret"
UPSERT_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETE_EVENTS = ("ANNOTATIONS_DELETED",)
EVENTS = (*UPSERT_EVENTS, *DELETE_EVENTS)


def label_studio_unavailable(message: str) -> Unavailable:
    """Label Studio cannot be reached or answers 5xx/429 now; the caller retries later."""
    return Unavailable(message, code="label_studio_unavailable")


def _send(
    client: LabelStudio,
    method: str,
    path: str,
    *,
    refused: str,
    allow: tuple[int, ...] = (),
    long: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """One call of Label Studio's REST API beside the SDK (plain JSON, no per-item model
    walks). Unreachable or overloaded (5xx, 429): the retryable Unavailable; another refusal:
    FailedPrecondition saying what was `refused`; a status in `allow` is the caller's."""
    wrapper = client._client_wrapper
    timeout = max(float(wrapper.get_timeout() or 60), 300.0) if long else wrapper.get_timeout()
    headers = {**wrapper.get_headers(), **kwargs.pop("headers", {})}
    try:
        response = wrapper.httpx_client.httpx_client.request(
            method, f"{wrapper.get_base_url()}{path}", headers=headers, timeout=timeout, **kwargs
        )
    except httpx.TransportError as exc:
        raise label_studio_unavailable(f"Label Studio is unreachable: {exc}") from None
    if response.status_code in allow:
        return response
    check_response(response, refused)
    return response


def check_response(response: httpx.Response, refused: str, hint: str = "") -> None:
    """Unavailable for a Label Studio that cannot answer now (5xx, 429), FailedPrecondition
    for one that refused `refused` (4xx)."""
    if response.status_code >= 500 or response.status_code == 429:
        raise label_studio_unavailable(f"Label Studio answered {response.status_code}")
    if response.status_code >= 400:
        raise FailedPrecondition(
            f"Label Studio refused to {refused}: {response.status_code} {response.text[:200]}{hint}"
        )


def unavailable_or_none(exc: BaseException) -> Unavailable | None:
    """The retryable form of an error (Label Studio or a service unreachable), or None."""
    if isinstance(exc, Unavailable):
        return exc
    if isinstance(exc, httpx.TransportError):
        return label_studio_unavailable(f"Label Studio is unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, ApiError) and (
        exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    ):
        return label_studio_unavailable(f"Label Studio answered {exc.status_code}: {exc.body}")
    return None


def connect(url: str, token: str, timeout: float) -> LabelStudio:
    """An SDK client for Label Studio with our timeout."""
    return LabelStudio(base_url=url, api_key=token, timeout=timeout)


def task_payload(task: Any) -> dict[str, Any]:
    """A task from the SDK (pydantic model or dict) as a plain dict."""
    if isinstance(task, dict):
        return task
    return task.model_dump(mode="json", warnings=False)


def task_pages(
    client: LabelStudio,
    project_id: int,
    page_size: int = 500,
    fields: str = "all",
    task_ids: Sequence[int] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Every page of a project's tasks (or of `task_ids` only) as plain JSON, in id order;
    with `fields="all"` each has its predictions and annotations in full (an export names its
    predictions by id only).

    Read with the SDK's own HTTP client and credentials but not through its models: turning a
    page into pydantic objects (and back) costs several times the request itself.
    """
    params: dict[str, Any] = {"project": project_id, "fields": fields}
    if task_ids is not None:
        selected = {"all": False, "included": [int(i) for i in task_ids]}
        params["query"] = orjson.dumps({"selectedItems": selected}).decode()
    page = 1
    while True:
        response = _send(
            client,
            "GET",
            "/api/tasks/",
            refused=f"list project {project_id}'s tasks",
            allow=(404,),
            params={**params, "page": page, "page_size": page_size},
        )
        if response.status_code == 404:  # past the last page
            return
        body = response.json()
        tasks = body.get("tasks", []) if isinstance(body, dict) else body
        if not tasks:
            return
        yield tasks
        if isinstance(body, dict) and page * page_size >= int(body.get("total") or 0):
            return
        page += 1


def export_annotated(
    client: LabelStudio, project_id: int, task_ids: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """Every annotated task of a project (or of `task_ids` only) with its annotations: Label
    Studio's JSON export, in one request, as plain JSON (the export is much cheaper for the
    server than paging `tasks.list(fields="all")`)."""
    params: list[tuple[str, str | int | float | bool | None]] = [("exportType", "JSON")]
    params += [("ids[]", int(i)) for i in task_ids]
    response = _send(
        client,
        "GET",
        f"/api/projects/{project_id}/export",
        refused=f"export project {project_id}",
        long=True,
        params=params,
    )
    body = response.json()
    return body if isinstance(body, list) else []


def import_tasks(client: LabelStudio, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
    """`projects.import_tasks(..., return_task_ids=True)` with the body sent as plain JSON; the
    ids of the new tasks, in order.

    The SDK's own call first walks every task through its type annotations, which costs about
    as much as the server's import itself.
    """
    response = _send(
        client,
        "POST",
        f"/api/projects/{project_id}/import",
        refused=f"import into project {project_id}",
        allow=(404,),
        long=True,
        params={"return_task_ids": "true"},
        content=orjson.dumps(tasks),
        headers={"Content-Type": "application/json"},
    )
    if response.status_code == 404:
        # Deleted since it was checked: the next attempt imports into a new one (ensure).
        raise label_studio_unavailable(f"Label Studio has no project {project_id} any more")
    return [int(i) for i in response.json().get("task_ids") or []]


def delete_tasks(client: LabelStudio, project_id: int, task_ids: Sequence[int]) -> None:
    """Deletes tasks of a project with the Data Manager's `delete_tasks` action (one request
    for many tasks; ids that are gone already are no error)."""
    _send(
        client,
        "POST",
        "/api/dm/actions",
        refused=f"delete tasks of project {project_id}",
        long=True,
        params={"id": "delete_tasks", "project": project_id},
        content=orjson.dumps(
            {"selectedItems": {"all": False, "included": [int(i) for i in task_ids]}}
        ),
        headers={"Content-Type": "application/json"},
    )
