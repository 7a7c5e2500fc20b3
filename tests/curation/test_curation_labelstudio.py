"""Against a real Label Studio: every shipped schema's config is accepted, tasks imported with
predictions come back with the right values (paged), and annotations made through the API the
way a browser makes them become the expected chat training examples."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from loomstack_curation.examples import training_example
from loomstack_curation.label_config import label_config
from loomstack_curation.predictions import build_task, regions
from loomstack_curation.prompts import render_prompt
from loomstack_curation.registry import TaskRegistry
from loomstack_curation.task_schema import TaskSchema

pytestmark = pytest.mark.labelstudio

TASKS = 120
PAGE_SIZE = 50  # three pages for 120 tasks
BROKEN_EVERY = 40  # every 40th model answer does not fit its schema
CATEGORIES = ["Billing", "Technical issue", "Account access", "Feature request", "Other"]
URGENCIES = ["Low", "Medium", "High", "Critical"]


def contact(i: int) -> dict[str, Any]:
    return {"name": f"Person {i}", "email": f"person{i}@example.com", "company": None}


# Per schema: the user prompt of task i, the model's answer, and the answers it should pre-fill.
SAMPLES: dict[str, Callable[[int], tuple[str, str, dict[str, Any]]]] = {
    "rate_answer": lambda i: (
        f"What is {i} + {i}?",
        f"{i} + {i} = {2 * i}.",
        {"corrected": f"{i} + {i} = {2 * i}."},
    ),
    "classify_ticket": lambda i: (
        f"Ticket {i}: my invoice is wrong & I can't log in <urgent>",
        json.dumps({"category": CATEGORIES[i % 5].lower(), "urgency": URGENCIES[i % 4]}),
        {"category": CATEGORIES[i % 5], "urgency": URGENCIES[i % 4]},
    ),
    "extract_contact": lambda i: (
        f"Hi, this is Person {i} (person{i}@example.com).",
        "```json\n" + json.dumps({"contact": contact(i)}) + "\n```",
        {"contact": contact(i)},
    ),
}


@dataclass
class ImportedProject:
    schema: TaskSchema
    project_id: int
    task_ids: list[int]
    # task id → (prompt, model answer, expected pre-filled answers or None when it did not fit)
    samples: dict[int, tuple[str, str, dict[str, Any] | None]]


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def imported(
    request: pytest.FixtureRequest, label_studio: LabelStudio, registry: TaskRegistry
) -> ImportedProject:
    """A project per shipped schema with TASKS tasks imported with their predictions."""
    schema = registry.get(request.param)
    project = label_studio.projects.create(
        title=f"{schema.name} v{schema.version}", label_config=label_config(schema)
    )
    assert project.id is not None
    tasks: list[Any] = []
    expected: list[tuple[str, str, dict[str, Any] | None]] = []
    for i in range(TASKS):
        prompt, answer, answers = SAMPLES[schema.id](i)
        fits: dict[str, Any] | None = answers
        if i % BROKEN_EVERY == BROKEN_EVERY - 1:
            answer, fits = "Sorry, I cannot help with that" * (schema.id != "rate_answer"), None
        built = build_task(schema, {}, prompt=prompt, answer=answer, model_version="smollm2-test")
        assert built.ok == (fits is not None), built.problems
        tasks.append(built.task)
        expected.append((prompt, answer, fits))
    response = label_studio.projects.import_tasks(
        id=project.id, request=tasks, return_task_ids=True
    )
    # SDK 2.0.19 declares `predictions_count` and no `task_ids`; the server's fields are extras.
    body = response.model_dump()
    assert body["task_count"] == TASKS
    assert body["prediction_count"] == TASKS - TASKS // BROKEN_EVERY
    task_ids: list[int] = body["task_ids"]
    assert len(task_ids) == TASKS
    return ImportedProject(schema, project.id, task_ids, dict(zip(task_ids, expected, strict=True)))


def test_a_broken_config_is_rejected(label_studio: LabelStudio) -> None:
    """The server really validates configs, so an accepted one means something."""
    with pytest.raises(ApiError) as caught:
        label_studio.projects.create(
            title="broken", label_config='<View><Rating name="r" toName="nowhere"/></View>'
        )
    assert caught.value.status_code == 400


def test_config_is_accepted_as_generated(
    label_studio: LabelStudio, imported: ImportedProject
) -> None:
    project = label_studio.projects.get(id=imported.project_id)
    assert project.label_config is not None
    for question in imported.schema.questions:
        assert f'name="{question.name}"' in project.label_config
    assert 'name="gold"' in project.label_config


def test_predictions_come_back_with_the_right_values(
    label_studio: LabelStudio, imported: ImportedProject
) -> None:
    schema = imported.schema
    # Iterating the pager's items follows every page (the SDK ends on the server's 404).
    tasks: list[Any] = list(
        label_studio.tasks.list(project=imported.project_id, fields="all", page_size=PAGE_SIZE)
    )
    assert sorted(t.id for t in tasks if t.id is not None) == sorted(imported.task_ids)
    for task in tasks:
        assert task.id is not None
        prompt, _, answers = imported.samples[task.id]
        assert task.data[schema.data[0].name] == prompt
        if answers is None:
            assert not task.predictions
            continue
        (prediction,) = task.predictions or []
        assert prediction.model_version == "smollm2-test"
        assert prediction.result is not None
        values = {r["from_name"]: r["value"] for r in prediction.result}
        assert values == {name: expected_value(schema, name, v) for name, v in answers.items()}


def expected_value(schema: TaskSchema, name: str, value: Any) -> dict[str, Any]:
    """The Label Studio region value a pre-filled answer must have."""
    kind = schema.question(name).type
    if kind == "choice":
        return {"choices": value if isinstance(value, list) else [value]}
    if kind == "rating":
        return {"rating": value}
    if kind == "structured":
        return {"text": [json.dumps(value, indent=2)]}
    return {"text": [value]}


# Per schema: (answers a person gives, gold?) for the first tasks, and the expected assistant text.
ANNOTATIONS: dict[str, list[tuple[dict[str, Any], bool, Callable[[str, str], str]]]] = {
    "rate_answer": [
        ({"rating": 5, "corrected": "Two. Four."}, True, lambda _p, _a: "Two. Four."),
        # Left the correction empty: the example trains on the model's answer.
        ({"rating": 2}, False, lambda _p, answer: answer),
    ],
    "classify_ticket": [
        (
            {"category": "Technical issue", "urgency": "Critical"},
            True,
            lambda _p, _a: '{"category": "Technical issue", "urgency": "Critical"}',
        ),
        (
            {"category": "Billing", "urgency": "Low"},
            False,
            lambda _p, _a: '{"category": "Billing", "urgency": "Low"}',
        ),
    ],
    "extract_contact": [
        (
            {"contact": {"name": "Ann Lee", "email": "ann@example.com", "company": "Acme & Co"}},
            True,
            lambda _p, _a: json.dumps(
                {"contact": {"name": "Ann Lee", "email": "ann@example.com", "company": "Acme & Co"}}
            ),
        ),
    ],
}


def test_annotations_become_training_examples(
    label_studio: LabelStudio, imported: ImportedProject
) -> None:
    schema = imported.schema
    cases = ANNOTATIONS[schema.id]
    annotated = {}
    for task_id, (answers, gold, _) in zip(imported.task_ids, cases, strict=False):
        # What the browser posts when a person submits: the regions of the edited answers.
        annotation = label_studio.annotations.create(
            id=task_id, result=regions(schema, answers, gold=gold), lead_time=12.5
        )
        assert annotation.id is not None
        annotated[task_id] = annotation.id

    exported = label_studio.projects.exports.as_json(imported.project_id)
    by_id = {task["id"]: task for task in exported}
    assert len(by_id) == TASKS
    for task_id, (answers, gold, assistant) in zip(imported.task_ids, cases, strict=False):
        task = by_id[task_id]
        (annotation,) = task["annotations"]
        assert annotation["id"] == annotated[task_id]
        example = training_example(schema, task["data"], annotation["result"])
        assert example.ok, example.problems
        assert example.gold is gold
        assert {k: v for k, v in example.answers.items() if k in answers} == answers
        prompt, answer, _ = imported.samples[task_id]
        expected = [{"role": "user", "content": prompt}]
        if schema.training.use_schema_prompt:
            expected.insert(0, {"role": "system", "content": render_prompt(schema)})
        expected.append({"role": "assistant", "content": assistant(prompt, answer)})
        assert example.as_json() == {"messages": expected}

    not_annotated = by_id[imported.task_ids[-1]]
    assert not_annotated["annotations"] == []


EVERY_TYPE: dict[str, Any] = {
    "id": "every_type",
    "version": 3,
    "name": "Every type & $pecial <chars>",
    "data": [
        {"type": "text", "name": "question", "title": "Question for $question"},
        {"type": "structured", "name": "order"},
        {"type": "file", "name": "photo", "media": "image"},
    ],
    "questions": [
        {
            "type": "choice",
            "name": "tags",
            "prompt": "Tags?",
            "options": ["a & b", "<c>", 'd "quoted"'],
            "multiple": True,
        },
        {"type": "rating", "name": "stars", "prompt": "Stars?", "max": 10, "about": "photo"},
        {"type": "boolean", "name": "safe", "prompt": "Safe?", "required": True},
        {"type": "text", "name": "summary", "prompt": "Summary?", "max_length": 200},
        {
            "type": "structured",
            "name": "fields",
            "prompt": "Fields?",
            "about": "order",
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
        },
        {"type": "boolean", "name": "keep", "prompt": "Train on it?"},
    ],
    "training": {
        "system_prompt": "Answer in JSON.",
        "user": ["question", "order"],
        "assistant": ["tags", "stars", "safe", "summary", "fields"],
        "gold": "keep",
    },
}


def test_every_question_and_data_type_round_trips(label_studio: LabelStudio) -> None:
    schema = TaskSchema.model_validate(EVERY_TYPE)
    project = label_studio.projects.create(title=schema.name, label_config=label_config(schema))
    assert project.id is not None
    answer = {
        "tags": ["A & B", "<c>"],
        "stars": 9,
        "safe": "yes",
        "summary": "Fine.",
        "fields": {"n": 2},
    }
    values = {"question": "Is {this} ok?", "order": {"id": 7, "items": ["x"]}, "photo": "/x.png"}
    built = build_task(schema, values, answer=json.dumps(answer), model_version="m")
    assert built.ok, built.problems
    response = label_studio.projects.import_tasks(
        id=project.id, request=[cast(Any, built.task)], return_task_ids=True
    )
    (task_id,) = response.model_dump()["task_ids"]
    task = label_studio.tasks.get(id=task_id)
    assert task.data["order"] == json.dumps(values["order"], indent=2)
    (prediction,) = task.predictions or []
    assert {r["from_name"]: r["value"] for r in prediction.result or []} == {
        "tags": {"choices": ["a & b", "<c>"]},
        "stars": {"rating": 9},
        "safe": {"choices": ["Yes"]},
        "summary": {"text": ["Fine."]},
        "fields": {"text": ['{\n  "n": 2\n}']},
    }

    corrected = {"tags": ['d "quoted"'], "stars": 3, "safe": False, "summary": "Bad.", "fields": {}}
    label_studio.annotations.create(id=task_id, result=regions(schema, corrected, gold=True))
    (exported,) = label_studio.projects.exports.as_json(project.id)
    example = training_example(schema, exported["data"], exported["annotations"][0]["result"])
    assert example.ok and example.gold, example.problems
    assert example.messages == [
        {"role": "system", "content": "Answer in JSON."},
        {
            "role": "user",
            "content": f"Question for $question:\nIs {{this}} ok?\n\norder:\n{task.data['order']}",
        },
        {"role": "assistant", "content": json.dumps(corrected)},
    ]
