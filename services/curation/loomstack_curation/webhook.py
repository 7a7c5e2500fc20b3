"""Label Studio's webhook events, verified by a shared secret, recorded as annotations.

Label Studio sends the secret in the header configured on the webhook (we register it as
`X-Loomstack-Webhook-Secret`). A missing or wrong secret is refused before anything is read.
Events: ANNOTATION_CREATED / ANNOTATION_UPDATED (one `annotation`), ANNOTATIONS_CREATED (a
list), ANNOTATIONS_DELETED (`annotations`, by id). Other events are acknowledged and ignored.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loomstack_kit.errors import InvalidArgument, Unauthenticated

from .annotations import AnnotationStore, annotation_record, label_studio_id
from .labelstudio_api import DELETE_EVENTS, SECRET_HEADER, UPSERT_EVENTS

__all__ = ["SECRET_HEADER", "WebhookOutcome", "handle_event", "verify_secret"]


def verify_secret(expected: str, given: str | None) -> None:
    """Unauthenticated unless `given` is the configured secret (constant-time comparison)."""
    if not expected:
        raise Unauthenticated("the webhook is disabled: no secret is configured")
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Unauthenticated(f"missing or wrong {SECRET_HEADER}")


@dataclass(frozen=True)
class WebhookOutcome:
    """What one event did."""

    action: str
    recorded: int = 0
    deleted: int = 0


def _items(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, Mapping)]
    return []


def handle_event(store: AnnotationStore, payload: Any) -> WebhookOutcome:
    """Records one (already verified) webhook payload."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("action"), str):
        raise InvalidArgument("expected a Label Studio webhook payload with an `action`")
    action = str(payload["action"])
    task = payload.get("task")
    task_id = task.get("id") if isinstance(task, Mapping) else None
    project = _project_id(payload.get("project"))
    if action in UPSERT_EVENTS:
        raw = _items(payload.get("annotation")) + _items(payload.get("annotations"))
        try:
            records = [annotation_record(a, task_id) for a in raw]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{action}: malformed annotation: {exc}") from None
        return WebhookOutcome(action, recorded=store.upsert(records, project))
    if action in DELETE_EVENTS:
        try:
            gone = _items(payload.get("annotations"))
            ids = [label_studio_id(a["id"]) for a in gone if "id" in a]
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{action}: malformed annotation id: {exc}") from None
        return WebhookOutcome(action, deleted=store.delete(ids, project))
    return WebhookOutcome(action)


def _project_id(value: Any) -> int | None:
    """The Label Studio project an event names: an event only ever touches tasks we recorded
    in that project (a task of another project's Label Studio project is not its to change)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if value is None:
        return None
    try:
        return label_studio_id(value)
    except (TypeError, ValueError):
        raise InvalidArgument("the event's `project` is not a Label Studio project") from None
