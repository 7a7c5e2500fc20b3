"""The vocabulary's enums (terms.py) ↔ the proto's enum numbers, by name: the proto's
`CONQUEST_TYPE_CANDIDATE` is `ConquestType.CANDIDATE`. Built from both, so a value one side
lacks fails at import, not in a request."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from loomstack.aris.v1 import conquests_pb2
from loomstack_kit.errors import InvalidArgument

from .terms import ConquestResult, ConquestStatus, ConquestType, parse

E = TypeVar("E", bound=StrEnum)


def _numbers(kind: type[E], proto_enum: Any, prefix: str) -> dict[E, Any]:
    # Any: the generated stubs type each enum's numbers as its own `ValueType`.
    numbers = {member: proto_enum.Value(f"{prefix}_{member.value}") for member in kind}
    if len(numbers) != len(proto_enum.values()) - 1:  # the proto's *_UNSPECIFIED
        raise RuntimeError(f"{kind.__name__} and the proto's {prefix} values differ")
    return numbers


TYPE = _numbers(ConquestType, conquests_pb2.ConquestType, "CONQUEST_TYPE")
STATUS = _numbers(ConquestStatus, conquests_pb2.ConquestStatus, "CONQUEST_STATUS")
RESULT = _numbers(ConquestResult, conquests_pb2.ConquestResult, "CONQUEST_RESULT")
TYPE_OF = {n: m for m, n in TYPE.items()}
STATUS_OF = {n: m for m, n in STATUS.items()}
RESULT_OF = {n: m for m, n in RESULT.items()}


def member(value: int, names: dict[Any, E], param: str) -> E | None:
    """The domain value of an enum field; None when unset; InvalidArgument for a number the
    proto does not define."""
    if value == 0:
        return None
    if value not in names:
        raise InvalidArgument(f"{param} {value} is not a known value", param=param)
    return names[value]


def name(value: int, names: dict[Any, E]) -> str | None:
    """The short name of an enum field's value (`CANDIDATE`); None when unset or unknown."""
    found = names.get(value)
    return found.value if found is not None else None


def number(kind: type[E], numbers: dict[E, Any], value: str, param: str) -> Any:
    """The proto number of a name a request gives (any case); 0 for an empty one;
    InvalidArgument naming `param` and the valid names for an unknown one."""
    return numbers[parse(kind, value, param)] if value.strip() else 0
