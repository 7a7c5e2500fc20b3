"""Helpers every shape uses: timestamps as unix seconds, OpenAI's list page."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message


def seconds(msg: Message, field: str) -> int | None:
    """A Timestamp field as unix seconds, None when unset."""
    if not msg.HasField(field):
        return None
    value: int = getattr(msg, field).seconds
    return value


def page(data: list[dict[str, Any]], has_more: bool, key: str = "id") -> dict[str, Any]:
    """OpenAI's cursor page: the objects, the first and last cursor, whether more follow."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0][key] if data else None,
        "last_id": data[-1][key] if data else None,
        "has_more": has_more,
    }
