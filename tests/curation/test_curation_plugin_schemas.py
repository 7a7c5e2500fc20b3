"""What plugins add to schemas: their schema directories (in their namespace), rating scales a
choice question names with `scale:`, and parsers `prediction.parser` names."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomstack_curation.catalog import SchemaCatalog
from loomstack_curation.predictions import build_prediction, parse_answer
from loomstack_curation.registry import SchemaInvalid, TaskRegistry, Vocabulary

SCHEMA = """\
id: {id}
version: 1
name: Mood
data:
  - {{type: text, name: prompt, source: prompt}}
questions:
  - type: choice
    name: mood
    prompt: How does it sound?
    {choices}
    required: true
prediction:
  format: json
  {parser}
training:
  user: [prompt]
  assistant: [mood]
"""


def write(directory: Path, name: str, **fields: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    values = {"id": name, "choices": "scale: hello.mood", "parser": ""} | fields
    path = directory / f"{name}.yaml"
    path.write_text(SCHEMA.format(**values))
    return path


def upper(answer: str) -> dict[str, str]:
    return {"mood": answer.strip().split()[-1].capitalize()}


VOCABULARY = Vocabulary(
    scales={"hello.mood": ["Great", "Fine", "Poor"]}, parsers={"hello.last_word": upper}
)


def test_a_scale_becomes_the_options_and_a_parser_reads_the_answer(tmp_path: Path) -> None:
    core, plugin = tmp_path / "core", tmp_path / "hello"
    core.mkdir()
    write(plugin, "hello.mood", parser="parser: hello.last_word")
    registry = TaskRegistry.load(core, vocabulary=VOCABULARY, namespaces={plugin: "hello"})
    schema = registry.get("hello.mood")
    question = schema.question("mood")
    assert question.options == ["Great", "Fine", "Poor"]  # type: ignore[union-attr]
    assert question.scale == "hello.mood"  # type: ignore[union-attr]
    assert parse_answer(schema, "I would say it is fine") == ({"mood": "Fine"}, [])
    prediction = build_prediction(schema, "all in all: great")
    assert prediction.ok
    # Without the parser the same answer is not JSON: the parser is what read it.
    plain = TaskRegistry.load(plugin, strict=False, vocabulary=Vocabulary(scales=VOCABULARY.scales))
    assert plain.problems  # the parser it names is unknown there


def test_problems_name_the_file_and_the_field(tmp_path: Path) -> None:
    plugin = tmp_path / "hello"
    unknown_scale = write(plugin, "hello.a", choices="scale: hello.colour")
    both = write(plugin, "hello.b", choices="scale: hello.mood\n    options: [x]")
    unknown_parser = write(plugin, "hello.c", parser="parser: hello.nope")
    outside = write(plugin, "other.d")
    with pytest.raises(SchemaInvalid) as caught:
        TaskRegistry.load(plugin, vocabulary=VOCABULARY, namespaces={})
    problems = "\n".join(caught.value.problems)
    assert (
        f"{unknown_scale}: questions.0.scale: unknown rating scale 'hello.colour' "
        "(known: hello.mood)" in problems
    )
    assert f"{both}: questions.0.options: set either options or scale, not both" in problems
    assert (
        f"{unknown_parser}: prediction.parser: unknown parser 'hello.nope' (known: hello.last_word)"
        in problems
    )
    core = tmp_path / "core"
    core.mkdir()
    registry = TaskRegistry.load(
        core, strict=False, vocabulary=VOCABULARY, namespaces={plugin: "hello"}
    )
    assert any(
        p.startswith(f"{outside}: id: 'other.d' must start with 'hello.'")
        for p in registry.problems
    )
    assert "other.d" not in registry


def test_a_parser_that_raises_is_a_problem_of_that_answer(tmp_path: Path) -> None:
    def broken(answer: str) -> dict[str, str]:
        raise ValueError("cannot read that")

    plugin = tmp_path / "hello"
    write(plugin, "hello.mood", parser="parser: hello.last_word")
    vocabulary = Vocabulary(scales=VOCABULARY.scales, parsers={"hello.last_word": broken})
    schema = TaskRegistry.load(plugin, vocabulary=vocabulary).get("hello.mood")
    values, problems = parse_answer(schema, "great")
    assert values == {}
    assert problems == ["parser hello.last_word: ValueError: cannot read that"]


def test_the_catalog_reloads_plugin_directories_too(tmp_path: Path) -> None:
    core, plugin = tmp_path / "core", tmp_path / "hello"
    core.mkdir()
    plugin.mkdir()
    catalog = SchemaCatalog(core, vocabulary=VOCABULARY, namespaces={plugin: "hello"})
    assert "hello.mood" not in catalog.registry
    write(plugin, "hello.mood")
    assert catalog.refresh()
    assert catalog.get("hello.mood").key == "hello.mood@1"
