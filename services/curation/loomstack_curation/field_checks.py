"""Checks of the values a request's fields carry, before any of them reaches a query.

A proto field can carry values no query takes: a string with NUL (PostgreSQL refuses it in
text), a page token of a hundred digits (more than a 64-bit column or OFFSET holds), Unicode
digits that `str.isdigit` accepts and `int` does not, a Timestamp in the year 300,000 (the
gateway cannot write it back as JSON), an enum number the proto does not define. Each is an
InvalidArgument naming the field, never a server error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from loomstack_kit.errors import InvalidArgument
from loomstack_kit.request_text import stored_text

MAX_INT64 = 2**63 - 1
# Timestamp's own range (google/protobuf/timestamp.proto): 0001-01-01 to 9999-12-31.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
# Ids and names are short; a filter value this long cannot match anything.
MAX_TEXT = 512
_DIGITS = re.compile(r"[0-9]{1,19}")

E = TypeVar("E")


def text(value: str, param: str, max_length: int = MAX_TEXT) -> str:
    """A string field's value, refused when a database could not compare it."""
    return stored_text(value, param, max_length)


def page_size(value: int, default: int = 100, most: int = 1000) -> int:
    """A page size: 0 = the default, larger than `most` = `most`, negative = refused."""
    if value < 0:
        raise InvalidArgument("page_size must not be negative", param="page_size")
    return min(value or default, most)


def number_token(token: str, param: str = "page_token") -> int:
    """A page token that is a non-negative 64-bit number (an id or an offset); empty = 0."""
    if not token:
        return 0
    if not _DIGITS.fullmatch(token) or int(token) > MAX_INT64:
        raise InvalidArgument(f"invalid {param}", param=param)
    return int(token)


def non_negative(value: int, param: str) -> int:
    """An integer field that must not be negative."""
    if value < 0:
        raise InvalidArgument(f"{param} must not be negative", param=param)
    return value


def timestamp(value: Timestamp, param: str) -> float:
    """Seconds since the epoch of a Timestamp field; 0 for an unset one."""
    if not (value.seconds or value.nanos):
        return 0.0
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS or not (
        0 <= value.nanos <= 999_999_999
    ):
        raise InvalidArgument(
            f"{param} is not a valid time (years 1 to 9999, nanos 0 to 999,999,999)", param=param
        )
    return value.seconds + value.nanos / 1e9


def enum(value: int, names: Mapping[int, E], param: str, unset: E) -> E:
    """The domain value of an enum field; `unset` for 0, InvalidArgument for a number the
    proto does not define."""
    if value == 0:
        return unset
    if value not in names:
        raise InvalidArgument(f"{param} {value} is not a known value", param=param)
    return names[value]


def ids(values: list[int], param: str) -> list[int]:
    """Positive 64-bit ids (Label Studio's are; anything else names nothing)."""
    for value in values:
        if value <= 0:
            raise InvalidArgument(f"{param} must be positive ids, not {value}", param=param)
    return values
