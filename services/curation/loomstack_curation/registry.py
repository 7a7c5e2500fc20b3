"""TaskRegistry: every task schema of a directory (`*.yaml`, `*.yml`, `*.json`), by id and version.

Lookups by id return the latest version; an explicit version returns that one. Problems name
the file and the field (`schemas/bad.yaml: questions.2.type: unknown question type 'slider'
(use ...)`); the same id and version in two files names both files.

Plugins add what a schema may name (`Vocabulary`): rating scales, whose labels become a choice
question's options (`scale:`), and parsers (`prediction.parser`). A plugin's own schema files
must have ids in its namespace (`<plugin>.<name>`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from loomstack_kit.errors import InvalidArgument, NotFound

from .task_schema import AnswerParser, TaskSchema, describe_errors

SCHEMA_SUFFIXES = (".yaml", ".yml", ".json")


class SchemaInvalid(ValueError):
    """One or more schema files are broken; `problems` holds one `file: field: message` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def as_domain_error(self) -> InvalidArgument:
        """The error a service reports to its callers."""
        return InvalidArgument(str(self), code="invalid_schema")


@dataclass(frozen=True)
class Vocabulary:
    """What schemas may name beyond the core: rating scales and parsers (from plugins)."""

    scales: Mapping[str, Sequence[str]] = field(default_factory=dict)
    parsers: Mapping[str, AnswerParser] = field(default_factory=dict)


NO_VOCABULARY = Vocabulary()


def _with_scales(path: Path, raw: dict[str, Any], vocabulary: Vocabulary) -> dict[str, Any]:
    """The raw schema with each `scale:` of a choice question turned into its options."""
    questions = raw.get("questions")
    if not isinstance(questions, list):
        return raw
    resolved = []
    for index, question in enumerate(questions):
        if isinstance(question, dict) and question.get("scale") is not None:
            name = question["scale"]
            where = f"{path}: questions.{index}"
            if "options" in question:
                raise SchemaInvalid([f"{where}.options: set either options or scale, not both"])
            labels = vocabulary.scales.get(name) if isinstance(name, str) else None
            if labels is None:
                known = ", ".join(sorted(vocabulary.scales)) or "none"
                raise SchemaInvalid(
                    [f"{where}.scale: unknown rating scale {name!r} (known: {known})"]
                )
            question = {**question, "options": list(labels)}
        resolved.append(question)
    return {**raw, "questions": resolved}


def read_schema_file(path: Path, vocabulary: Vocabulary = NO_VOCABULARY) -> TaskSchema:
    """Parses and validates one schema file; SchemaInvalid names the file and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaInvalid([f"{path}: cannot read: {exc}"]) from None
    try:
        raw: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SchemaInvalid([f"{path}: not valid {path.suffix[1:].upper()}: {exc}"]) from None
    if not isinstance(raw, dict):
        raise SchemaInvalid([f"{path}: expected a mapping of fields at the top level"])
    try:
        schema = TaskSchema.model_validate(_with_scales(path, raw, vocabulary))
    except ValidationError as exc:
        raise SchemaInvalid([f"{path}: {line}" for line in describe_errors(exc)]) from None
    name = schema.prediction.parser
    if name is not None:
        parser = vocabulary.parsers.get(name)
        if parser is None:
            known = ", ".join(sorted(vocabulary.parsers)) or "none"
            raise SchemaInvalid(
                [f"{path}: prediction.parser: unknown parser {name!r} (known: {known})"]
            )
        schema = schema.with_parser(parser)
    return schema


def schema_files(directory: Path) -> list[Path]:
    """The schema files of a directory, sorted by name (none if it is not one)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in SCHEMA_SUFFIXES)


@dataclass
class TaskRegistry:
    """Schemas by id and version, with the file each came from."""

    schemas: dict[str, dict[int, TaskSchema]] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(
        cls,
        directory: Path | str,
        *,
        strict: bool = True,
        vocabulary: Vocabulary = NO_VOCABULARY,
        namespaces: Mapping[Path, str] | None = None,
    ) -> TaskRegistry:
        """Loads every schema file of `directory` (not recursive, sorted by name), and of the
        plugin directories of `namespaces` (directory → the plugin whose ids they must have).

        strict: any problem raises SchemaInvalid listing all of them. Otherwise the good schemas
        load and `problems` lists the rest (a service keeps running on a broken new file).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise SchemaInvalid([f"{directory}: not a directory"])
        files = [(p, "") for p in schema_files(directory)]
        for extra, namespace in (namespaces or {}).items():
            files += [(p, namespace) for p in schema_files(Path(extra))]
        return cls.from_files(files, strict=strict, vocabulary=vocabulary)

    @classmethod
    def from_files(
        cls,
        files: Iterable[Path | tuple[Path, str]],
        *,
        strict: bool = True,
        vocabulary: Vocabulary = NO_VOCABULARY,
    ) -> TaskRegistry:
        """Like `load`, for an explicit list of files (each with the namespace its ids need,
        empty for none)."""
        registry = cls()
        for entry in files:
            path, namespace = entry if isinstance(entry, tuple) else (entry, "")
            try:
                schema = read_schema_file(path, vocabulary)
                if namespace and not schema.id.startswith(namespace + "."):
                    raise SchemaInvalid(
                        [
                            f"{path}: id: {schema.id!r} must start with {namespace + '.'!r} "
                            f"(the schemas of plugin {namespace!r} are in its namespace)"
                        ]
                    )
                registry.add(schema, path)
            except SchemaInvalid as exc:
                registry.problems.extend(exc.problems)
        if strict and registry.problems:
            raise SchemaInvalid(registry.problems)
        return registry

    def add(self, schema: TaskSchema, source: Path) -> None:
        """Registers a schema; SchemaInvalid if its id and version are taken already."""
        taken = self.sources.get(schema.key)
        if taken is not None:
            raise SchemaInvalid(
                [
                    f"{source}: id {schema.id!r} version {schema.version} is defined twice: "
                    f"in {taken} and in {source}"
                ]
            )
        self.schemas.setdefault(schema.id, {})[schema.version] = schema
        self.sources[schema.key] = source

    def get(self, schema_id: str, version: int | None = None) -> TaskSchema:
        """The latest version of a schema, or the given one; NotFound if there is none."""
        versions = self.schemas.get(schema_id)
        if not versions:
            known = ", ".join(sorted(self.schemas)) or "none"
            raise NotFound(f"unknown schema {schema_id!r} (known: {known})", param="schema_id")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            have = ", ".join(str(v) for v in sorted(versions))
            raise NotFound(
                f"schema {schema_id!r} has no version {version} (versions: {have})",
                param="version",
            )
        return versions[version]

    def versions(self, schema_id: str) -> list[TaskSchema]:
        """Every version of a schema, oldest first (empty if unknown)."""
        versions = self.schemas.get(schema_id, {})
        return [versions[v] for v in sorted(versions)]

    def latest(self) -> list[TaskSchema]:
        """The latest version of every schema, by id."""
        return [self.get(schema_id) for schema_id in sorted(self.schemas)]

    def source(self, schema: TaskSchema) -> Path:
        """The file a registered schema came from."""
        return self.sources[schema.key]

    def __contains__(self, schema_id: object) -> bool:
        return schema_id in self.schemas

    def __len__(self) -> int:
        return len(self.sources)
