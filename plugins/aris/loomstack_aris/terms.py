"""Aris's vocabulary: conquest types, statuses and results, the schema each type is labeled
with, and the two rating scales of the candidate evaluation.

Every name a request may carry is parsed here (case-insensitively), so an unknown one is the
same InvalidArgument wherever it comes from, naming the field and listing the valid values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from loomstack_kit.errors import InvalidArgument

PLUGIN = "aris"


class ConquestType(StrEnum):
    """What a conquest analyses (→ the core's `schema_type`)."""

    CANDIDATE = "CANDIDATE"
    CARTOGRAPHER = "CARTOGRAPHER"
    CV_PARSING = "CV_PARSING"
    SLACK_ANALYSIS = "SLACK_ANALYSIS"
    EMAIL_RESPONSE = "EMAIL_RESPONSE"
    EIDOS_DISCOVERY = "EIDOS_DISCOVERY"
    CUSTOM = "CUSTOM"

    @property
    def schema_id(self) -> str:
        """The id of the schema the plugin ships for this type (`aris.candidate`, ...)."""
        return f"{PLUGIN}.{self.value.lower()}"


class ConquestStatus(StrEnum):
    """Where a conquest is in its life: DRAFT → ANALYZING (its batch runs) → COMPLETED or
    FAILED; CANCELLED by a person. DOWNLOADING_INFO is a client's step before the batch."""

    DRAFT = "DRAFT"
    DOWNLOADING_INFO = "DOWNLOADING_INFO"
    ANALYZING = "ANALYZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        """No batch event moves a finished conquest back."""
        return self in (ConquestStatus.COMPLETED, ConquestStatus.FAILED, ConquestStatus.CANCELLED)


class ConquestResult(StrEnum):
    """A person's verdict on a conquest; VICTORY is the gold star's counterpart."""

    PENDING = "PENDING"
    VICTORY = "VICTORY"
    DEFEAT = "DEFEAT"
    NEUTRAL = "NEUTRAL"


# The candidate evaluation's two scales (contributed as ratings `aris.recommendation` and
# `aris.pedigree`; the schema file spells the same options out).
RECOMMENDATION = ("Strong Yes", "Yes", "Maybe", "No", "Strong No")
PEDIGREE = ("Exceptional", "Strong", "Average", "Below Average", "Weak")
RATINGS = {f"{PLUGIN}.recommendation": RECOMMENDATION, f"{PLUGIN}.pedigree": PEDIGREE}

E = TypeVar("E", bound=StrEnum)


def parse(kind: type[E], value: str, param: str) -> E:
    """The member of `kind` named `value` (any case, surrounding blanks ignored);
    InvalidArgument naming `param` and the valid names otherwise."""
    name = value.strip().upper()
    for member in kind:
        if member.value == name:
            return member
    valid = ", ".join(m.value for m in kind)
    raise InvalidArgument(f"{param} {value!r} is not a valid value (valid: {valid})", param=param)


def type_of_schema(schema_id: str, param: str = "schema_id") -> ConquestType:
    """The conquest type whose schema is `schema_id` (a version suffix `@N` is ignored)."""
    bare = schema_id.strip().partition("@")[0]
    for member in ConquestType:
        if member.schema_id == bare:
            return member
    valid = ", ".join(m.schema_id for m in ConquestType)
    raise InvalidArgument(
        f"{param} {schema_id!r} is not an Aris schema (valid: {valid})", param=param
    )
