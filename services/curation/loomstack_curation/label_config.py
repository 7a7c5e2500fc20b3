"""A schema as a Label Studio labeling config (XML) and the task data that config displays.

Every data source becomes a `Header` and an object tag (`Text`, `Image`, `Audio`); every
question a `Header` with its prompt and a control (`Choices`, `Rating`, `TextArea`; booleans are
two `Choices`; structured answers are JSON text in a `TextArea`), plus the gold-star checkbox
unless a boolean question marks gold. The XML is built with ElementTree, so every attribute is
escaped; Label Studio's own validation accepts it (tested against the real server).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from .task_schema import (
    GOLD_CHOICE,
    BooleanQuestion,
    ChoiceQuestion,
    FileSource,
    RatingQuestion,
    StructuredSource,
    TaskSchema,
    TextQuestion,
    TextSource,
)

_MEDIA_TAGS = {"image": "Image", "audio": "Audio", "text": "Text"}
# Label Studio substitutes `$name` anywhere in a Header value with task data.
_VARIABLE = re.compile(r"\$(?=[\w\[\].{}])")
_FULLWIDTH_DOLLAR = "\uff04"


def literal(text: str) -> str:
    """Text shown verbatim in a Header: a `$` that would start a data variable is replaced by
    the look-alike full-width dollar sign."""
    return _VARIABLE.sub(_FULLWIDTH_DOLLAR, text)


def label_config(schema: TaskSchema) -> str:
    """The Label Studio labeling config of a schema."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value=literal(schema.name), size="3")
    if schema.description.strip():
        ET.SubElement(view, "Header", value=literal(schema.description.strip()), size="6")

    for source in schema.data:
        box = ET.SubElement(view, "View", className=f"loomstack-data-{source.name}")
        ET.SubElement(box, "Header", value=literal(source.header), size="5")
        if isinstance(source, FileSource):
            attrs = {"name": source.name, "value": f"${source.name}"}
            if source.media == "text":
                attrs["valueType"] = "url"
            ET.SubElement(box, _MEDIA_TAGS[source.media], attrs)
        else:
            ET.SubElement(box, "Text", name=source.name, value=f"${source.name}")

    first = schema.data[0].name
    for question in schema.questions:
        box = ET.SubElement(view, "View", className=f"loomstack-question-{question.name}")
        prompt = question.prompt + (" *" if question.required else "")
        ET.SubElement(box, "Header", value=literal(prompt), size="5")
        attrs = {"name": question.name, "toName": question.about or first}
        if question.required:
            attrs["required"] = "true"
        if isinstance(question, ChoiceQuestion):
            attrs["choice"] = "multiple" if question.multiple else "single-radio"
            attrs["showInline"] = "true"
            choices = ET.SubElement(box, "Choices", attrs)
            for option in question.options:
                ET.SubElement(choices, "Choice", value=option)
        elif isinstance(question, BooleanQuestion):
            attrs["choice"] = "single-radio"
            attrs["showInline"] = "true"
            choices = ET.SubElement(box, "Choices", attrs)
            ET.SubElement(choices, "Choice", value=question.true_label)
            ET.SubElement(choices, "Choice", value=question.false_label)
        elif isinstance(question, RatingQuestion):
            attrs.update(maxRating=str(question.max), icon="star", size="medium")
            ET.SubElement(box, "Rating", attrs)
        else:
            # One editable value (the prediction, then the person's correction), not a list.
            attrs.update(rows=str(question.rows), editable="true", maxSubmissions="1")
            if isinstance(question, TextQuestion) and question.placeholder:
                attrs["placeholder"] = question.placeholder
            ET.SubElement(box, "TextArea", attrs)

    if schema.gold_question is None:
        box = ET.SubElement(view, "View", className="loomstack-gold")
        ET.SubElement(box, "Header", value="Gold star: use this task as training data", size="5")
        choices = ET.SubElement(
            box, "Choices", name=schema.training.gold, toName=first, choice="multiple"
        )
        ET.SubElement(
            choices, "Choice", value=GOLD_CHOICE, hint="A correct, exemplary answer to train on"
        )

    ET.indent(view, space="  ")
    return ET.tostring(view, encoding="unicode")


def display_value(source: TextSource | StructuredSource | FileSource, value: Any) -> Any:
    """A data value as Label Studio shows it: structured data as pretty JSON text."""
    if isinstance(source, StructuredSource) and not isinstance(value, str):
        return json.dumps(value, indent=2, ensure_ascii=False)
    if value is not None and not isinstance(value, str):
        return str(value)
    return value


def task_data(
    schema: TaskSchema,
    values: Mapping[str, Any],
    *,
    prompt: str | None = None,
    answer: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The `data` of a Label Studio task and the problems (missing fields) found building it.

    values: the caller's data by field name; prompt/answer fill the fields whose `source` says so.
    """
    data: dict[str, Any] = {}
    problems: list[str] = []
    for source in schema.data:
        if source.source == "prompt":
            value: Any = prompt
        elif source.source == "answer":
            value = answer
        else:
            value = values.get(source.name)
        if value is None:
            problems.append(f"data field {source.name!r} is missing ({source.source})")
            value = ""
        data[source.name] = display_value(source, value)
    return data, problems
