"""Request ids: one per gateway request, carried to every service (`x-request-id`) and logged."""

from __future__ import annotations

import uuid


def new_request_id() -> str:
    """`req_<32 hex>`, the shape of OpenAI's request ids."""
    return f"req_{uuid.uuid4().hex}"
