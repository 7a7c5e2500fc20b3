"""What every shape uses: timestamps as unix seconds (the list page is loomstack_kit.list_page)."""

from __future__ import annotations

from google.protobuf.message import Message


def seconds(msg: Message, field: str) -> int | None:
    """A Timestamp field as unix seconds, None when unset."""
    if not msg.HasField(field):
        return None
    value: int = getattr(msg, field).seconds
    return value
