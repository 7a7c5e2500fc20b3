"""Auto-accept: a batch's predictions taken as accepted annotations, with no person in between.

A batch created with `metadata.curation_auto_accept = "true"` next to its `schema_type` is
imported as usual, and every task whose prediction fits the schema completely is imported
with an annotation equal to that prediction. In Label Studio the annotation belongs to the
user `auto-accept@loomstack.local` (created on first use) and is not ground truth, so people
see which tasks nobody has looked at and can still correct them. Here it is recorded at once,
with the annotator `auto-accept`, so a snapshot can take it without waiting for the reconcile;
it stays automatic until a person changes it in Label Studio. A task whose answer did not
(fully) fit gets no annotation and waits for a person.

Meant for bootstrapping (a first data set from a trusted model, structured output distilled
into an adapter, the demo). Snapshots can leave such tasks out (`exclude_auto_accepted`), and
`LOOMSTACK_CURATION_ALLOW_AUTO_ACCEPT=false` makes the service ignore the flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from label_studio_sdk.client import LabelStudio

from .labelstudio_api import check_response, label_studio_unavailable

METADATA_KEY = "curation_auto_accept"
ANNOTATOR = "auto-accept"
USER_EMAIL = "auto-accept@loomstack.local"
_TRUE = ("true", "1", "yes")


def requested(metadata: Mapping[str, str]) -> bool:
    """Whether a batch's metadata asks for auto-accept."""
    return str(metadata.get(METADATA_KEY, "")).strip().lower() in _TRUE


def accepted_annotation(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """The annotation a task is imported with: the prediction's regions, by the auto-accept
    user, not ground truth."""
    return {
        "result": list(prediction["result"]),
        "completed_by": {"email": USER_EMAIL},
        "ground_truth": False,
        "was_cancelled": False,
        "lead_time": 0,
    }


def is_automatic(annotation: Mapping[str, Any], user_id: int) -> bool:
    """Whether an annotation from Label Studio (export or tasks API) is the auto-accept
    user's."""
    by = annotation.get("completed_by")
    if isinstance(by, Mapping):
        return by.get("id") == user_id or by.get("email") == USER_EMAIL
    return by == user_id


def ensure_user(client: LabelStudio) -> int:
    """The Label Studio id of the auto-accept user, created (in the token owner's organization,
    which makes it a member of our projects) the first time."""
    wrapper = client._client_wrapper
    http = wrapper.httpx_client.httpx_client
    url = f"{wrapper.get_base_url()}/api/users/"
    headers = wrapper.get_headers()
    try:
        listed = http.get(url, headers=headers, timeout=wrapper.get_timeout())
        _check(listed, "list users")
        for user in listed.json():
            if isinstance(user, dict) and user.get("email") == USER_EMAIL:
                return int(user["id"])
        created = http.post(
            url,
            json={
                "email": USER_EMAIL,
                "username": ANNOTATOR,
                "first_name": "Auto",
                "last_name": "accept",
            },
            headers=headers,
            timeout=wrapper.get_timeout(),
        )
        _check(created, "create the auto-accept user")
    except httpx.TransportError as exc:
        raise label_studio_unavailable(f"Label Studio is unreachable: {exc}") from None
    return int(created.json()["id"])


def _check(response: httpx.Response, what: str) -> None:
    check_response(response, what, " (auto-accept needs a token of an organization administrator)")
