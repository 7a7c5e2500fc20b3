"""Task schema files: the shipped ones load; broken ones are reported by file and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from loomstack_curation.registry import SchemaInvalid, TaskRegistry
from loomstack_curation.task_schema import BooleanQuestion, TaskSchema
from loomstack_kit.errors import NotFound

BASE: dict[str, Any] = {
    "id": "demo",
    "version": 1,
    "name": "Demo",
    "data": [{"type": "text", "name": "prompt"}, {"type": "text", "name": "answer"}],
    "questions": [
        {"type": "rating", "name": "rating", "prompt": "How good?", "max": 5},
        {"type": "choice", "name": "topic", "prompt": "Topic?", "options": ["A", "B"]},
        {"type": "text", "name": "corrected", "prompt": "Fix it"},
    ],
    "prediction": {"format": "text", "question": "corrected"},
    "training": {"user": ["prompt"], "assistant": ["corrected"]},
}


def write(directory: Path, name: str, content: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if name.endswith(".json"):
        path.write_text(json.dumps(content))
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(SchemaInvalid) as caught:
        TaskRegistry.load(directory)
    return caught.value.problems


def test_every_shipped_schema_loads(schemas_dir: Path) -> None:
    registry = TaskRegistry.load(schemas_dir)
    assert {s.id for s in registry.latest()} == {
        "rate_answer",
        "classify_ticket",
        "extract_contact",
    }
    assert not registry.problems
    ticket = registry.get("classify_ticket")
    category = ticket.question("category")
    assert category.type == "choice" and len(category.options) >= 4
    assert {q.type for q in registry.get("rate_answer").questions} == {"rating", "text"}
    assert registry.get("extract_contact").question("contact").type == "structured"
    assert registry.source(ticket) == schemas_dir / "classify_ticket.yaml"


def test_unknown_question_type_names_file_and_field(tmp_path: Path) -> None:
    schema = copy.deepcopy(BASE)
    schema["questions"].append({"type": "slider", "name": "s", "prompt": "?"})
    path = write(tmp_path, "bad.yaml", schema)
    assert problems_of(tmp_path) == [
        f"{path}: questions.3.type: unknown question type 'slider' "
        "(use choice, rating, boolean, text, structured)"
    ]


def test_missing_id_names_file_and_field(tmp_path: Path) -> None:
    schema = copy.deepcopy(BASE)
    del schema["id"]
    path = write(tmp_path, "no_id.json", schema)
    assert problems_of(tmp_path) == [f"{path}: id: required field is missing"]


def test_rating_max_below_one_names_file_and_field(tmp_path: Path) -> None:
    schema = copy.deepcopy(BASE)
    schema["questions"][0]["max"] = 0
    path = write(tmp_path, "rating.yaml", schema)
    (problem,) = problems_of(tmp_path)
    assert problem.startswith(f"{path}: questions.0.max: ")
    assert "greater than or equal to 1" in problem


def test_choice_without_options_names_file_and_field(tmp_path: Path) -> None:
    schema = copy.deepcopy(BASE)
    schema["questions"][1]["options"] = []
    path = write(tmp_path, "choice.yaml", schema)
    assert problems_of(tmp_path) == [f"{path}: questions.1.options: needs at least 1 item(s)"]


def test_same_id_and_version_in_two_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", BASE)
    second = write(tmp_path, "b.json", BASE)
    (problem,) = problems_of(tmp_path)
    assert str(first) in problem and str(second) in problem
    assert "'demo' version 1 is defined twice" in problem


def test_every_broken_file_is_reported_and_good_ones_load_when_not_strict(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", BASE)
    bad = copy.deepcopy(BASE)
    bad["id"] = "other"
    bad["questions"][0]["colour"] = "red"
    bad_path = write(tmp_path, "bad.yaml", bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    registry = TaskRegistry.load(tmp_path, strict=False)
    assert [s.id for s in registry.latest()] == ["demo"]
    assert f"{bad_path}: questions.0.colour: unknown field" in registry.problems
    assert any(p.startswith(f"{broken}: not valid YAML") for p in registry.problems)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"training": {"user": ["missing"], "assistant": ["corrected"]}},
            "training.user.0: unknown data field 'missing' (data: prompt, answer)",
        ),
        (
            {"prediction": {"format": "text", "question": "rating"}},
            "prediction.question: must be a text or structured question",
        ),
        (
            {"prediction": {"format": "json", "keys": {"nope": "x"}}},
            "prediction.keys.nope: unknown question 'nope' (questions: rating, topic, corrected)",
        ),
        (
            {"data": [{"type": "text", "name": "prompt"}, {"type": "text", "name": "rating"}]},
            "questions.0.name: name 'rating' is used twice (data.1)",
        ),
        (
            {"data": [{"type": "video", "name": "clip"}]},
            "data.0.type: unknown data type 'video' (use text, structured, file)",
        ),
    ],
)
def test_references_and_fields_are_checked(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    schema = {**copy.deepcopy(BASE), **change}
    path = write(tmp_path, "ref.yaml", schema)
    assert problems_of(tmp_path) == [f"{path}: {expected}"]


def test_structured_question_needs_a_valid_json_schema(tmp_path: Path) -> None:
    schema = copy.deepcopy(BASE)
    schema["questions"].append(
        {"type": "structured", "name": "x", "prompt": "?", "schema": {"type": "nonsense"}}
    )
    path = write(tmp_path, "structured.yaml", schema)
    (problem,) = problems_of(tmp_path)
    assert problem.startswith(f"{path}: questions.3.schema: not a valid JSON schema")


def test_latest_version_wins_unless_a_version_is_named(tmp_path: Path) -> None:
    write(tmp_path, "v1.yaml", BASE)
    write(tmp_path, "v2.yaml", {**BASE, "version": 2, "name": "Demo v2"})
    registry = TaskRegistry.load(tmp_path)
    assert registry.get("demo").version == 2
    assert registry.get("demo", 1).name == "Demo"
    assert [s.version for s in registry.versions("demo")] == [1, 2]
    with pytest.raises(NotFound, match="has no version 3"):
        registry.get("demo", 3)
    with pytest.raises(NotFound, match="unknown schema 'nope' \\(known: demo\\)"):
        registry.get("nope")


def test_a_boolean_question_can_mark_gold() -> None:
    schema = TaskSchema.model_validate(
        {
            **BASE,
            "questions": [
                *BASE["questions"],
                {"type": "boolean", "name": "use_it", "prompt": "Train on it?"},
            ],
            "training": {"user": ["prompt"], "assistant": ["corrected"], "gold": "use_it"},
        }
    )
    assert isinstance(schema.gold_question, BooleanQuestion)
