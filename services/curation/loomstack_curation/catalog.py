"""The schemas a running service knows: the registry of a directory, reloaded when it changes.

A schema file added while the service runs is picked up on the next `refresh()`, so an import
that failed for an unknown `schema_type` succeeds once its schema appears. A broken file never
takes the good schemas down (the registry loads non-strict and lists the problems).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from loomstack_kit.errors import NotFound

from .registry import NO_VOCABULARY, TaskRegistry, Vocabulary, schema_files
from .task_schema import TaskSchema


def parse_schema_type(schema_type: str) -> tuple[str, int | None]:
    """`id` or `id@version` (the batch metadata value) as (id, version or None)."""
    schema_id, _, version = schema_type.strip().partition("@")
    if version:
        if not version.isdigit():
            raise NotFound(
                f"schema_type {schema_type!r}: the version after '@' must be a number",
                code="unknown_schema",
                param="metadata.schema_type",
            )
        return schema_id, int(version)
    return schema_id, None


class SchemaCatalog:
    """Thread-safe access to the current registry of a schema directory (and of the plugins'
    schema directories, `namespaces`: directory → plugin name)."""

    def __init__(
        self,
        directory: Path,
        *,
        vocabulary: Vocabulary = NO_VOCABULARY,
        namespaces: Mapping[Path, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.vocabulary = vocabulary
        self.namespaces = dict(namespaces or {})
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, float, int], ...] | None = None
        self._registry = TaskRegistry()
        # Counts reloads, so a reader can tell cheaply whether anything changed since it looked.
        self.generation = 0
        self.refresh()

    def _current_stamp(self) -> tuple[tuple[str, float, int], ...]:
        entries = []
        for directory in (self.directory, *self.namespaces):
            for path in schema_files(directory):
                stat = path.stat()
                entries.append((str(path), stat.st_mtime, stat.st_size))
        return tuple(entries)

    def refresh(self) -> bool:
        """Reloads the directory if a file was added, changed or removed; True if it was."""
        stamp = self._current_stamp()
        with self._lock:
            if stamp == self._stamp:
                return False
            registry = (
                TaskRegistry.load(
                    self.directory,
                    strict=False,
                    vocabulary=self.vocabulary,
                    namespaces=self.namespaces,
                )
                if self.directory.is_dir()
                else TaskRegistry(problems=[f"{self.directory}: not a directory"])
            )
            self._registry, self._stamp = registry, stamp
            self.generation += 1
            return True

    @property
    def registry(self) -> TaskRegistry:
        """The registry as of the last refresh."""
        with self._lock:
            return self._registry

    def get(self, schema_id: str, version: int | None = None) -> TaskSchema:
        """A schema by id (latest) or id and version; NotFound names the known ones."""
        return self.registry.get(schema_id, version)

    def resolve(self, schema_type: str) -> TaskSchema:
        """The schema a batch's `metadata.schema_type` names; NotFound (`unknown_schema`)."""
        schema_id, version = parse_schema_type(schema_type)
        try:
            return self.get(schema_id, version)
        except NotFound as exc:
            raise NotFound(
                exc.message, code="unknown_schema", param="metadata.schema_type"
            ) from None
