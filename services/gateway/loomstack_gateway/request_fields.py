"""Types of the values a request carries, bounded like the proto fields they fill, and the base
of every JSON request body.

A proto int32 field holds -2**31..2**31-1, an int64 field -2**63..2**63-1, and a string field
only text that encodes as UTF-8; anything else raises ValueError while the gateway builds the
request message, which would be a server error. Declared on the parameter instead, the bound is
checked by FastAPI before the route runs (a 400 naming the parameter, like any invalid value)
and appears in the OpenAPI document. JSON can spell a lone UTF-16 surrogate (`"\\ud800"`) and
Python's parser keeps it; `RequestBody` refuses it in any string of a body, keys included, and
refuses NaN and infinities (proto doubles would carry them into comparisons that are then never
true).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
NonNegativeInt32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
# Ids that are positive 64-bit numbers (Label Studio's task ids).
PositiveInt64 = Annotated[int, Field(ge=1, le=INT64_MAX)]


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(value: Any) -> None:
    """Raises ValueError when a string in `value` (a dict's keys too) is not UTF-8 text."""
    if isinstance(value, str):
        if not _is_text(value):
            raise ValueError("not valid Unicode text (a lone UTF-16 surrogate)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_text(item)


class RequestBody(BaseModel):
    """Base of the routes' JSON bodies (each sets `extra` itself)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        # After validation a nested body is a model that checked its own fields (so the error
        # names the nested field); plain values, lists and dicts are looked through here.
        if not isinstance(value, BaseModel):
            _check_text(value)
        return value
