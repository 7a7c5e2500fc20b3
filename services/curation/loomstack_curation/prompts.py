"""A schema as an LLM prompt: instructions with a sample JSON answer, the JSON schema for
`response_format`, and the user message built from a task's data.

The prompt asks the model the schema's questions under the JSON keys of `prediction.keys`, so
a structured-output answer parses straight into predictions (predictions.py) and a training
example's assistant message has the same shape (examples.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .task_schema import (
    PLACEHOLDER,
    AnyQuestion,
    BooleanQuestion,
    ChoiceQuestion,
    RatingQuestion,
    TaskSchema,
    TextQuestion,
)


def question_json_schema(question: AnyQuestion) -> dict[str, Any]:
    """The JSON schema of one question's answer."""
    description = question.prompt
    if isinstance(question, ChoiceQuestion):
        if question.multiple:
            return {
                "type": "array",
                "items": {"type": "string", "enum": list(question.options)},
                "uniqueItems": True,
                "description": description,
            }
        return {"type": "string", "enum": list(question.options), "description": description}
    if isinstance(question, RatingQuestion):
        return {
            "type": "integer",
            "minimum": 1,
            "maximum": question.max,
            "description": description,
        }
    if isinstance(question, BooleanQuestion):
        return {"type": "boolean", "description": description}
    if isinstance(question, TextQuestion):
        schema: dict[str, Any] = {"type": "string", "description": description}
        if question.max_length is not None:
            schema["maxLength"] = question.max_length
        return schema
    return {"description": description, **question.json_schema}


def response_json_schema(schema: TaskSchema) -> dict[str, Any]:
    """The JSON schema of the whole answer: an object keyed by `prediction.keys`."""
    keys = schema.prediction_keys
    if not keys:
        raise ValueError(f"schema {schema.key} takes a plain-text answer, not JSON")
    properties = {key: question_json_schema(schema.question(name)) for name, key in keys.items()}
    required = [key for name, key in keys.items() if schema.question(name).required]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def response_format(schema: TaskSchema) -> dict[str, Any] | None:
    """OpenAI `response_format` for structured output; None for a plain-text answer."""
    if not schema.prediction_keys:
        return None
    return {
        "type": "json_schema",
        "json_schema": {
            "name": re.sub(r"[^A-Za-z0-9_-]", "_", schema.id)[:64],
            "description": schema.name,
            "schema": response_json_schema(schema),
        },
    }


def sample_answer(schema: TaskSchema) -> dict[str, Any]:
    """An example answer that validates against `response_json_schema`."""
    return {
        key: _sample_for_question(schema.question(name))
        for name, key in schema.prediction_keys.items()
    }


def _sample_for_question(question: AnyQuestion) -> Any:
    if isinstance(question, ChoiceQuestion):
        return [question.options[0]] if question.multiple else question.options[0]
    if isinstance(question, RatingQuestion):
        return question.max
    if isinstance(question, BooleanQuestion):
        return True
    if isinstance(question, TextQuestion):
        sample = question.placeholder or "..."
        return sample[: question.max_length] if question.max_length else sample
    return sample_for_json_schema(question.json_schema)


def sample_for_json_schema(schema: Mapping[str, Any]) -> Any:
    """A plausible value for a (simple) JSON schema: examples, enums and types are honoured."""
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("oneOf", "anyOf"):
        if schema.get(key):
            return sample_for_json_schema(schema[key][0])
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: sample_for_json_schema(sub) for name, sub in properties.items()}
    if kind == "array":
        items = schema.get("items")
        count = max(1, int(schema.get("minItems", 1)))
        return [sample_for_json_schema(items) for _ in range(count)] if items else []
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return schema.get("minimum", 1.0)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _sample_string(schema)


def _sample_string(schema: Mapping[str, Any]) -> str:
    samples = {
        "email": "jane.doe@example.com",
        "uri": "https://example.com",
        "date": "2026-01-31",
        "date-time": "2026-01-31T12:00:00Z",
    }
    value = samples.get(str(schema.get("format")), "...")
    return value.ljust(int(schema.get("minLength", 0)), ".")


def _describe(question: AnyQuestion) -> str:
    if isinstance(question, ChoiceQuestion):
        options = ", ".join(json.dumps(o, ensure_ascii=False) for o in question.options)
        return f"a list of any of {options}" if question.multiple else f"one of {options}"
    if isinstance(question, RatingQuestion):
        return f"an integer from 1 to {question.max}"
    if isinstance(question, BooleanQuestion):
        return "true or false"
    if isinstance(question, TextQuestion):
        limit = f" of at most {question.max_length} characters" if question.max_length else ""
        return f"a text{limit}"
    return "a JSON value matching this schema: " + json.dumps(
        question.json_schema, ensure_ascii=False
    )


# Schema object → its rendered prompt: a snapshot renders it once per example. The entry holds
# the schema, so its id cannot be reused while it is cached.
_PROMPTS: dict[int, tuple[TaskSchema, str]] = {}


def render_prompt(schema: TaskSchema) -> str:
    """The instructions (system message) for a model answering the schema's task."""
    cached = _PROMPTS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    prompt = _render_prompt(schema)
    if len(_PROMPTS) >= 256:
        _PROMPTS.clear()
    _PROMPTS[id(schema)] = (schema, prompt)
    return prompt


def _render_prompt(schema: TaskSchema) -> str:
    lines = [schema.name]
    if schema.description.strip():
        lines += ["", schema.description.strip()]
    keys = schema.prediction_keys
    if not keys:
        return "\n".join(lines)
    lines += ["", "Answer these questions about the input:"]
    for number, (name, key) in enumerate(keys.items(), start=1):
        question = schema.question(name)
        required = "required" if question.required else "optional"
        lines.append(f'{number}. "{key}" ({required}): {question.prompt}')
        lines.append(f"   Give {_describe(question)}.")
    lines += [
        "",
        "Reply with one JSON object and nothing else, for example:",
        json.dumps(sample_answer(schema), indent=2, ensure_ascii=False),
    ]
    return "\n".join(lines)


def format_user_message(schema: TaskSchema, data: Mapping[str, Any]) -> str:
    """The user message from a task's data fields (`training.user`, `training.user_template`)."""
    fields = schema.training.user
    values = {name: _as_text(data.get(name)) for name in fields}
    template = schema.training.user_template
    if template is not None:
        # One pass, no str.format: braces in the template's text or in the data stay as they are.
        return re.sub(PLACEHOLDER, lambda m: values.get(m.group(1), m.group(0)), template)
    if len(fields) == 1:
        return values[fields[0]]
    return "\n\n".join(f"{schema.data_source(name).header}:\n{values[name]}" for name in fields)


def render_messages(schema: TaskSchema, data: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat request for one task: the rendered prompt, then the user message."""
    return [
        {"role": "system", "content": render_prompt(schema)},
        {"role": "user", "content": format_user_message(schema, data)},
    ]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)
