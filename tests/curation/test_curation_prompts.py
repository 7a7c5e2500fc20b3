"""Prompt and JSON schema rendering, model answers → predictions, annotations → examples
(plain functions; the round trip through a real Label Studio is in test_curation_labelstudio)."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from loomstack_curation.examples import training_example
from loomstack_curation.label_config import label_config, literal, task_data
from loomstack_curation.predictions import build_prediction, build_task, regions
from loomstack_curation.prompts import (
    render_messages,
    render_prompt,
    response_format,
    response_json_schema,
    sample_answer,
)
from loomstack_curation.registry import TaskRegistry
from loomstack_curation.task_schema import TaskSchema


@pytest.mark.parametrize("schema_id", ["classify_ticket", "extract_contact"])
def test_json_schema_validates_the_sample_answer(registry: TaskRegistry, schema_id: str) -> None:
    schema = registry.get(schema_id)
    json_schema = response_json_schema(schema)
    jsonschema.Draft202012Validator.check_schema(json_schema)
    jsonschema.validate(sample_answer(schema), json_schema)
    prompt = render_prompt(schema)
    # The prompt shows the very sample the schema validates.
    assert json.dumps(sample_answer(schema), indent=2) in prompt
    fmt = response_format(schema)
    assert fmt is not None and fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == schema_id
    assert fmt["json_schema"]["schema"] == json_schema


def test_classification_prompt_lists_questions_and_options(registry: TaskRegistry) -> None:
    schema = registry.get("classify_ticket")
    prompt = render_prompt(schema)
    assert prompt.startswith("Classify a support ticket\n")
    assert '1. "category" (required): Which category does the ticket belong to?' in prompt
    assert '"Billing", "Technical issue", "Account access", "Feature request", "Other"' in prompt
    json_schema = response_json_schema(schema)
    assert json_schema["required"] == ["category", "urgency"]
    assert json_schema["additionalProperties"] is False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"category": "Weather", "urgency": "Low"}, json_schema)
    messages = render_messages(schema, {"ticket": "I was charged twice."})
    assert messages == [
        {"role": "system", "content": prompt},
        {"role": "user", "content": "I was charged twice."},
    ]


def test_plain_text_schema_has_no_response_format(registry: TaskRegistry) -> None:
    schema = registry.get("rate_answer")
    assert response_format(schema) is None
    assert render_prompt(schema).startswith("Rate this answer\n")
    with pytest.raises(ValueError, match="plain-text answer"):
        response_json_schema(schema)


def test_label_config_escapes_markup_and_data_variables(registry: TaskRegistry) -> None:
    schema = registry.get("classify_ticket").model_copy(
        update={"name": 'Tickets <b>&</b> "quotes" for $ticket'}
    )
    config = label_config(schema)
    assert 'value="Tickets &lt;b&gt;&amp;&lt;/b&gt; &quot;quotes&quot; for \uff04ticket"' in config
    assert literal("costs $5 or $ 5") == "costs \uff045 or $ 5"


def test_answers_that_do_not_fit_are_problems_not_crashes(registry: TaskRegistry) -> None:
    schema = registry.get("classify_ticket")
    assert build_prediction(schema, "I think it is billing").problems == [
        "the answer is not JSON: Expecting value at line 1 column 1"
    ]
    assert build_prediction(schema, "[1, 2]").problems == [
        "the answer is JSON list, expected an object"
    ]
    partial = build_prediction(schema, '{"category": "billing", "urgency": "Urgent"}')
    assert partial.answers == {"category": "Billing"}
    assert partial.problems == [
        "urgency: 'Urgent' is not one of ['Low', 'Medium', 'High', 'Critical']"
    ]
    assert [r["from_name"] for r in partial.regions] == ["category"]
    missing = build_prediction(schema, '{"category": "Other"}')
    assert missing.problems == ["urgency: the answer has no 'urgency'"]

    contact = registry.get("extract_contact")
    wrong = build_prediction(contact, '{"contact": {"name": "Ann", "email": 7, "company": null}}')
    assert wrong.problems == [
        "contact: does not match its JSON schema at email: 7 is not of type 'string', 'null'"
    ]
    assert wrong.regions == []

    rate = registry.get("rate_answer")
    assert build_prediction(rate, "   ").problems == ["corrected: the answer is empty"]


def test_fenced_json_answer_is_read(registry: TaskRegistry) -> None:
    schema = registry.get("classify_ticket")
    answer = 'Sure!\n```json\n{"category": "Account access", "urgency": "high"}\n```'
    result = build_prediction(schema, answer.split("Sure!\n")[1])
    assert result.ok
    assert result.answers == {"category": "Account access", "urgency": "High"}
    prose = build_prediction(schema, 'Here: {"category": "Other", "urgency": "Low"} Done.')
    assert prose.answers == {"category": "Other", "urgency": "Low"}


def test_task_data_reports_missing_fields(registry: TaskRegistry) -> None:
    schema = registry.get("rate_answer")
    data, problems = task_data(schema, {}, prompt="What is 2+2?", answer=None)
    assert data == {"prompt": "What is 2+2?", "answer": ""}
    assert problems == ["data field 'answer' is missing (answer)"]
    imported = build_task(schema, {}, answer="4", model_version="m", prompt="What is 2+2?")
    assert imported.ok
    assert imported.task["data"] == {"prompt": "What is 2+2?", "answer": "4"}
    (prediction,) = imported.task["predictions"]
    assert prediction["model_version"] == "m"
    assert prediction["result"][0]["value"] == {"text": ["4"]}


def test_example_needs_the_answers_it_trains_on(registry: TaskRegistry) -> None:
    schema = registry.get("classify_ticket")
    data = {"ticket": "Cannot log in"}
    only_category = regions(schema, {"category": "Account access"}, gold=True)
    example = training_example(schema, data, only_category)
    assert not example.ok and example.gold
    assert example.problems == ["urgency: the annotation has no answer (needed for training)"]
    # Regions of controls the schema does not know (an edited project config) are ignored.
    foreign = [{"from_name": "extra", "to_name": "ticket", "type": "choices", "value": {}}]
    full = regions(schema, {"category": "Account access", "urgency": "High"})
    example = training_example(schema, data, full + foreign)
    assert example.ok and not example.gold
    assert example.messages[-1] == {
        "role": "assistant",
        "content": '{"category": "Account access", "urgency": "High"}',
    }


def test_user_template_inserts_fields_and_keeps_other_braces(registry: TaskRegistry) -> None:
    base = registry.get("classify_ticket")
    training = base.training.model_copy(
        update={"user_template": 'Ticket {ticket} -- reply like {"category": ...}'}
    )
    schema = base.model_copy(update={"training": training})
    message = render_messages(schema, {"ticket": "{ticket} is {broken}"})[1]["content"]
    assert message == 'Ticket {ticket} is {broken} -- reply like {"category": ...}'


def test_a_gold_question_is_never_predicted(registry: TaskRegistry) -> None:
    data = registry.get("rate_answer").model_dump(by_alias=True)
    data["questions"].append({"type": "boolean", "name": "keep", "prompt": "Gold?"})
    data["prediction"] = {"format": "json"}
    data["training"]["gold"] = "keep"
    schema = TaskSchema.model_validate(data)
    assert "keep" not in schema.prediction_keys
    assert "keep" not in response_json_schema(schema)["properties"]
    data["prediction"] = {"format": "json", "keys": {"keep": "keep"}}
    with pytest.raises(ValidationError, match=r"prediction\.keys\.keep: the gold flag is not"):
        TaskSchema.model_validate(data)
