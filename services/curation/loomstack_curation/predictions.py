"""A model's answer as Label Studio pre-annotations (prediction `result` regions).

The answer (the assistant message content) is read per the schema's `prediction` mapping, each
value is checked against its question, and the regions are built with `label_studio_sdk`'s
`LabelInterface(config).get_control(name).label(...)` and checked with its `validate_region`,
so Label Studio shows them. An answer that does not parse or fit is never an exception: the
result lists the regions that fit and one problem per value that does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from label_studio_sdk.label_interface import LabelInterface

from .label_config import label_config, task_data
from .task_schema import (
    GOLD_CHOICE,
    AnyQuestion,
    BooleanQuestion,
    ChoiceQuestion,
    RatingQuestion,
    StructuredQuestion,
    TaskSchema,
    TextQuestion,
)

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


class AnswerMismatch(ValueError):
    """A value does not fit its question."""


@dataclass(frozen=True)
class PredictionResult:
    """Regions for the values that fit, decoded answers, and one problem per value that did not."""

    regions: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the whole answer fit."""
        return not self.problems

    def prediction(self, model_version: str, score: float | None = None) -> dict[str, Any]:
        """The prediction object of a Label Studio task import."""
        prediction: dict[str, Any] = {"model_version": model_version, "result": self.regions}
        if score is not None:
            prediction["score"] = score
        return prediction


@dataclass(frozen=True)
class TaskImport:
    """One Label Studio task to import (`data` + `predictions`) and what went wrong building it."""

    task: dict[str, Any]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@lru_cache(maxsize=64)
def _parse_config(config: str) -> LabelInterface:
    return LabelInterface(config)


# Schema object → its interface. Rendering the config to find the cached parse costs more than
# the rest of a prediction, and an import builds thousands with one schema object. The entry
# holds the schema itself, so its id cannot be reused while it is cached.
_BY_SCHEMA: dict[int, tuple[TaskSchema, LabelInterface]] = {}


def label_interface(schema: TaskSchema) -> LabelInterface:
    """The SDK's view of the schema's labeling config (parsed once per config)."""
    cached = _BY_SCHEMA.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    interface = _parse_config(label_config(schema))
    if len(_BY_SCHEMA) >= 256:
        _BY_SCHEMA.clear()
    _BY_SCHEMA[id(schema)] = (schema, interface)
    return interface


def decode_json(text: str) -> Any:
    """JSON from a model's answer, tolerating a Markdown code fence or prose around an object."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as first_error:
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                pass
        raise first_error from None


def parse_answer(schema: TaskSchema, answer: str) -> tuple[dict[str, Any], list[str]]:
    """Raw values by question name from a model's answer, and the problems reading it."""
    if schema.prediction.format == "text":
        name = schema.prediction.question
        assert name is not None  # the schema's validator guarantees it
        if not answer.strip():
            return {}, [f"{name}: the answer is empty"]
        if isinstance(schema.question(name), StructuredQuestion):
            try:
                return {name: decode_json(answer)}, []
            except json.JSONDecodeError as exc:
                return {}, [f"{name}: the answer is not JSON: {exc.msg}"]
        return {name: answer.strip()}, []
    if schema.parser is not None:
        try:
            decoded: Any = dict(schema.parser(answer))
        except Exception as exc:  # a plugin's parser: its failure is a problem of this answer
            return {}, [f"parser {schema.prediction.parser}: {type(exc).__name__}: {exc}"]
        return _by_key(schema, decoded)
    try:
        decoded = decode_json(answer)
    except json.JSONDecodeError as exc:
        return {}, [f"the answer is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    if not isinstance(decoded, dict):
        return {}, [f"the answer is JSON {type(decoded).__name__}, expected an object"]
    return _by_key(schema, decoded)


def _by_key(schema: TaskSchema, decoded: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values of an answer object by question name, and the required ones it lacks."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, key in schema.prediction_keys.items():
        # null and [] are what a model says for "no answer".
        if decoded.get(key) not in (None, []):
            values[name] = decoded[key]
        elif schema.question(name).required:
            problems.append(f"{name}: the answer has no {key!r}")
    return values, problems


def coerce(question: AnyQuestion, value: Any) -> Any:
    """A value as the question's canonical answer; AnswerMismatch says why it does not fit."""
    if isinstance(question, ChoiceQuestion):
        values = value if isinstance(value, list) else [value]
        if not question.multiple and len(values) != 1:
            raise AnswerMismatch(f"expected one of the options, got {len(values)} values")
        chosen: list[str] = []
        for item in values:
            option = _match_option(question.options, item)
            if option not in chosen:
                chosen.append(option)
        return chosen if question.multiple else chosen[0]
    if isinstance(question, RatingQuestion):
        rating = _as_int(value)
        if rating is None or not 1 <= rating <= question.max:
            raise AnswerMismatch(f"expected an integer from 1 to {question.max}, got {value!r}")
        return rating
    if isinstance(question, BooleanQuestion):
        return _as_bool(question, value)
    if isinstance(question, TextQuestion):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise AnswerMismatch(f"expected text, got {type(value).__name__}")
        text = str(value)
        if question.max_length is not None and len(text) > question.max_length:
            raise AnswerMismatch(f"text is {len(text)} characters, at most {question.max_length}")
        return text
    error = best_match(jsonschema.Draft202012Validator(question.json_schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise AnswerMismatch(
            f"does not match its JSON schema{' at ' + where if where else ''}: {error.message}"
        )
    return value


def _match_option(options: list[str], value: Any) -> str:
    if not isinstance(value, str):
        raise AnswerMismatch(f"expected one of {options}, got {value!r}")
    if value in options:
        return value
    # Small models change case and spacing; a unique case-insensitive match is the same option.
    folded = [o for o in options if o.casefold() == value.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    raise AnswerMismatch(f"{value!r} is not one of {options}")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _as_bool(question: BooleanQuestion, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        folded = value.strip().casefold()
        if folded in ("true", "yes", question.true_label.casefold()):
            return True
        if folded in ("false", "no", question.false_label.casefold()):
            return False
    raise AnswerMismatch(f"expected true or false, got {value!r}")


def regions(
    schema: TaskSchema, answers: Mapping[str, Any], *, gold: bool = False
) -> list[dict[str, Any]]:
    """Label Studio result regions for canonical answers by question name (see `coerce`),
    plus the gold star when `gold` is set. Used for predictions and for annotations alike."""
    interface = label_interface(schema)
    result: list[dict[str, Any]] = []
    for name, value in answers.items():
        question = schema.question(name)
        control = interface.get_control(name)
        if isinstance(question, ChoiceQuestion):
            chosen = value if isinstance(value, list) else [value]
            region = control.label(choices=chosen)
        elif isinstance(question, BooleanQuestion):
            label = question.true_label if value else question.false_label
            region = control.label(choices=[label])
        elif isinstance(question, RatingQuestion):
            region = control.label(rating=value)
        elif isinstance(question, TextQuestion):
            region = control.label(text=[value])
        else:
            region = control.label(text=[json.dumps(value, indent=2, ensure_ascii=False)])
        result.append(json.loads(region.to_json()))
    if gold:
        gold_question = schema.gold_question
        control = interface.get_control(schema.training.gold)
        label = gold_question.true_label if gold_question is not None else GOLD_CHOICE
        result.append(json.loads(control.label(choices=[label]).to_json()))
    return result


def build_prediction(schema: TaskSchema, answer: str) -> PredictionResult:
    """Pre-annotation regions from a model's answer; never raises for a bad answer."""
    values, problems = parse_answer(schema, answer)
    answers: dict[str, Any] = {}
    for name, value in values.items():
        try:
            answers[name] = coerce(schema.question(name), value)
        except AnswerMismatch as exc:
            problems.append(f"{name}: {exc}")
    built = regions(schema, answers)
    interface = label_interface(schema)
    valid = []
    for region in built:
        errors = interface.validate_region(region, return_errors=True)
        if errors:
            problems.append(f"{region['from_name']}: Label Studio rejects the region: {errors}")
        else:
            valid.append(region)
    return PredictionResult(regions=valid, answers=answers, problems=problems)


def build_task(
    schema: TaskSchema,
    values: Mapping[str, Any],
    *,
    answer: str,
    model_version: str,
    prompt: str | None = None,
) -> TaskImport:
    """A task for `labelstudio_api.import_tasks`: its data and, when any value fit, the
    prediction."""
    data, problems = task_data(schema, values, prompt=prompt, answer=answer)
    prediction = build_prediction(schema, answer)
    task: dict[str, Any] = {"data": data}
    if prediction.regions:
        task["predictions"] = [prediction.prediction(model_version)]
    return TaskImport(task=task, problems=problems + prediction.problems)
