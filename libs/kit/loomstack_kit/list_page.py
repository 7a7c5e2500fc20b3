"""OpenAI's cursor page, the shape every list of the HTTP API has (the gateway's routes and
the plugins' routes alike)."""

from __future__ import annotations

from typing import Any


def page(data: list[dict[str, Any]], has_more: bool, key: str = "id") -> dict[str, Any]:
    """The objects, the first and last cursor, whether more follow."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0][key] if data else None,
        "last_id": data[-1][key] if data else None,
        "has_more": has_more,
    }
