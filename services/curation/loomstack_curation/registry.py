"""TaskRegistry: every task schema of a directory (`*.yaml`, `*.yml`, `*.json`), by id and version.

Lookups by id return the latest version; an explicit version returns that one. Problems name
the file and the field (`schemas/bad.yaml: questions.2.type: unknown question type 'slider'
(use ...)`); the same id and version in two files names both files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from loomstack_kit.errors import InvalidArgument, NotFound

from .task_schema import TaskSchema, describe_errors

SCHEMA_SUFFIXES = (".yaml", ".yml", ".json")


class SchemaInvalid(ValueError):
    """One or more schema files are broken; `problems` holds one `file: field: message` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def as_domain_error(self) -> InvalidArgument:
        """The error a service reports to its callers."""
        return InvalidArgument(str(self), code="invalid_schema")


def read_schema_file(path: Path) -> TaskSchema:
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
        return TaskSchema.model_validate(raw)
    except ValidationError as exc:
        raise SchemaInvalid([f"{path}: {line}" for line in describe_errors(exc)]) from None


@dataclass
class TaskRegistry:
    """Schemas by id and version, with the file each came from."""

    schemas: dict[str, dict[int, TaskSchema]] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path | str, *, strict: bool = True) -> TaskRegistry:
        """Loads every schema file of `directory` (not recursive, sorted by name).

        strict: any problem raises SchemaInvalid listing all of them. Otherwise the good schemas
        load and `problems` lists the rest (a service keeps running on a broken new file).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise SchemaInvalid([f"{directory}: not a directory"])
        files = sorted(p for p in directory.iterdir() if p.suffix in SCHEMA_SUFFIXES)
        return cls.from_files(files, strict=strict)

    @classmethod
    def from_files(cls, files: Iterable[Path], *, strict: bool = True) -> TaskRegistry:
        """Like `load`, for an explicit list of files."""
        registry = cls()
        for path in files:
            try:
                registry.add(read_schema_file(path), path)
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
