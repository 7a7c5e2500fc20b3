"""An annotated Label Studio task as an OpenAI chat training example (`{"messages": [...]}`).

The annotation's result regions are read back into answers by question, the schema's
`training` mapping picks the system prompt, the user message (from the task's data) and the
assistant message (from the answers), and the gold flag says whether the task is gold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .predictions import AnswerMismatch, coerce, decode_json
from .prompts import format_user_message, render_prompt
from .task_schema import (
    GOLD_CHOICE,
    AnyQuestion,
    BooleanQuestion,
    ChoiceQuestion,
    RatingQuestion,
    StructuredQuestion,
    TaskSchema,
)


@dataclass(frozen=True)
class TrainingExample:
    """A chat example (empty `messages` when a problem prevents one), its answers and gold flag."""

    messages: list[dict[str, str]]
    gold: bool
    answers: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the example is complete."""
        return bool(self.messages) and not self.problems

    def as_json(self) -> dict[str, Any]:
        """The canonical OpenAI chat fine-tuning line."""
        return {"messages": self.messages}


def read_answers(
    schema: TaskSchema, result: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, Any], bool, list[str]]:
    """Answers by question name, the gold flag, and problems, from annotation result regions.

    Regions of unknown controls are ignored (a config edited in Label Studio may add some).
    """
    names = {q.name for q in schema.questions}
    answers: dict[str, Any] = {}
    problems: list[str] = []
    gold = False
    for region in result:
        name = region.get("from_name")
        value = region.get("value") or {}
        if name == schema.training.gold and schema.gold_question is None:
            gold = GOLD_CHOICE in (value.get("choices") or [])
            continue
        if name not in names:
            continue
        question = schema.question(str(name))
        try:
            answers[question.name] = coerce(question, _region_value(question, value))
        except (AnswerMismatch, KeyError, IndexError, TypeError) as exc:
            problems.append(f"{question.name}: cannot read the annotation: {exc}")
    gold_question = schema.gold_question
    if gold_question is not None:
        gold = answers.get(gold_question.name) is True
    return answers, gold, problems


def _region_value(question: AnyQuestion, value: Mapping[str, Any]) -> Any:
    if isinstance(question, ChoiceQuestion | BooleanQuestion):
        choices = list(value["choices"])
        return choices if isinstance(question, ChoiceQuestion) and question.multiple else choices[0]
    if isinstance(question, RatingQuestion):
        return value["rating"]
    text = "\n".join(value["text"])
    if isinstance(question, StructuredQuestion):
        try:
            return decode_json(text)
        except json.JSONDecodeError as exc:
            raise AnswerMismatch(f"not JSON: {exc.msg}") from None
    return text


def training_example(
    schema: TaskSchema, data: Mapping[str, Any], result: Iterable[Mapping[str, Any]]
) -> TrainingExample:
    """The chat example of one annotated task (its `data` and one annotation's `result`)."""
    answers, gold, problems = read_answers(schema, result)
    training = schema.training
    assistant: dict[str, Any] = {}
    for name in training.assistant:
        if name in answers:
            assistant[name] = answers[name]
        elif name in training.fallback and data.get(training.fallback[name]):
            try:
                assistant[name] = _fallback_value(schema, name, data[training.fallback[name]])
            except AnswerMismatch as exc:
                problems.append(f"{name}: the fallback {training.fallback[name]!r} fails: {exc}")
        else:
            problems.append(f"{name}: the annotation has no answer (needed for training)")
    if problems:
        return TrainingExample(messages=[], gold=gold, answers=answers, problems=problems)

    messages: list[dict[str, str]] = []
    if training.use_schema_prompt:
        messages.append({"role": "system", "content": render_prompt(schema)})
    elif training.system_prompt:
        messages.append({"role": "system", "content": training.system_prompt})
    messages.append({"role": "user", "content": format_user_message(schema, data)})
    messages.append({"role": "assistant", "content": assistant_content(schema, assistant)})
    return TrainingExample(messages=messages, gold=gold, answers=answers)


def _fallback_value(schema: TaskSchema, name: str, value: Any) -> Any:
    question = schema.question(name)
    if isinstance(question, StructuredQuestion) and isinstance(value, str):
        try:
            value = decode_json(value)
        except json.JSONDecodeError as exc:
            raise AnswerMismatch(f"not JSON: {exc.msg}") from None
    return coerce(question, value)


def assistant_content(schema: TaskSchema, answers: Mapping[str, Any]) -> str:
    """The assistant message: the JSON object the prompt asks for (same keys), or, for a
    plain-text schema, the one answer as text."""
    keys = schema.prediction_keys
    if keys:
        return json.dumps(
            {keys.get(name, name): value for name, value in answers.items()}, ensure_ascii=False
        )
    ((name, value),) = answers.items()
    if isinstance(schema.question(name), StructuredQuestion):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
