"""No string field of a request may hold NUL; `stored_text` checks one a query will compare.

PostgreSQL refuses NUL in text ("PostgreSQL text fields cannot contain NUL (0x00) bytes"), so a
NUL in an id, a cursor, a filter, a name or a metadata value would fail the service's first
query with it as a server error (SQLite stores it, so the embedded default would accept what
production refuses). No field of our protos means anything with one: what may hold any byte
(chat requests, file chunks) is `bytes`. The kit's server checks every request message with
`reject_nul` before a servicer sees it, so each service refuses the value with INVALID_ARGUMENT
naming the field, on either database.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import InvalidArgument


def _refuse(param: str) -> InvalidArgument:
    return InvalidArgument(f"{param} must not contain NUL characters", param=param)


def _check_value(value: Any, param: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise _refuse(param)
    elif isinstance(value, Message):
        reject_nul(value, f"{param}.")


def reject_nul(message: Message, prefix: str = "") -> None:
    """Raises InvalidArgument naming the first string field (nested and map fields too, map
    keys included) of `message` that holds a NUL character."""
    for field, value in message.ListFields():
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        param = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                _check_value(key, param)
                _check_value(item, param)
        elif field.is_repeated:
            for item in value:
                _check_value(item, param)
        else:
            _check_value(value, param)


def stored_text(value: str, param: str, max_length: int) -> str:
    """A string a database can store and compare (not too long, no NUL, valid Unicode);
    InvalidArgument naming `param` otherwise. Services and plugins check their text fields
    with it before a query sees them."""
    if len(value) > max_length:
        raise InvalidArgument(f"{param} is longer than {max_length} characters", param=param)
    if "\x00" in value:
        raise _refuse(param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{param} is not valid Unicode text", param=param) from None
    return value
