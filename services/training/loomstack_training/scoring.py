"""Scores of a model answer against the reference (human-labelled) answer.

Exact match compares whitespace- and case-normalized text; token overlap is the SQuAD-style
F1 of the two bags of lower-cased word tokens. The eval gate averages both over the held-out
examples for the base and the fine-tuned model.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_TOKEN = re.compile(r"\w+", re.UNICODE)


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0."""
    return 1.0 if _normalize(answer) == _normalize(reference) else 0.0


def token_overlap(answer: str, reference: str) -> float:
    """F1 of the shared word tokens (1.0 for two empty texts)."""
    a, r = _TOKEN.findall(answer.lower()), _TOKEN.findall(reference.lower())
    if not a or not r:
        return 1.0 if a == r else 0.0
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Scores:
    """Mean scores of one model over the examples."""

    exact_match: float
    token_overlap: float


def score(answers: list[str], references: list[str]) -> Scores:
    """Mean exact match and token overlap (answers and references in the same order)."""
    n = max(1, len(references))
    return Scores(
        exact_match=sum(exact_match(a, r) for a, r in zip(answers, references, strict=True)) / n,
        token_overlap=sum(token_overlap(a, r) for a, r in zip(answers, references, strict=True))
        / n,
    )


def promoted(base: Scores, fine_tuned: Scores, margin: float) -> bool:
    """The gate: the fine-tuned model's token overlap beats the base's by more than `margin`."""
    return fine_tuned.token_overlap - base.token_overlap > margin
