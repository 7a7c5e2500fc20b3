"""The `aris.candidate` parser: a model's candidate assessment → the candidate schema's answers.

Models wrap their JSON in prose or code fences, vary the keys' spelling (`Company Pedigree`,
`company-pedigree`) and the options' case (`strong yes`). The parser takes the first JSON object
in the text that names any of the schema's questions, matches keys and options without regard
to case, blanks, `-` or `_`, and leaves out what it cannot match (curation pre-fills only the
answers it gets; a person fills the rest).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .terms import PEDIGREE, RECOMMENDATION

# question → the options it takes
CANDIDATE_QUESTIONS: Mapping[str, Sequence[str]] = {
    "recommendation": RECOMMENDATION,
    "trajectory": PEDIGREE,
    "company_pedigree": PEDIGREE,
    "education_pedigree": PEDIGREE,
}


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text).strip().lower()


_KEYS = {_norm(q): q for q in CANDIDATE_QUESTIONS}


def _objects(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object embedded in the text, in order of where it starts."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            yield value
        start = text.find("{", start + 1)


def _option(value: Any, options: Sequence[str]) -> str | None:
    if not isinstance(value, str):
        return None
    wanted = _norm(value)
    return next((o for o in options if _norm(o) == wanted), None)


def parse_candidate(text: str) -> dict[str, Any]:
    """The answers a model's assessment gives, by question name (only the matched ones)."""
    for obj in _objects(text):
        answers: dict[str, Any] = {}
        named = False
        for key, value in obj.items():
            question = _KEYS.get(_norm(str(key)))
            if question is None:
                continue
            named = True
            option = _option(value, CANDIDATE_QUESTIONS[question])
            if option is not None:
                answers[question] = option
        if named:
            return answers
    return {}
