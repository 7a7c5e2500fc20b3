"""Dataset snapshots: immutable, versioned training sets built from annotated tasks.

A snapshot takes the annotated tasks that match a filter (schema, gold only, minimum agreement
or rating, annotation date range, limit, without auto-accepted ones), turns each task's latest
annotation into an OpenAI chat example (examples.py), drops duplicates (same messages), splits
train/validation by a hash of the example (the same example always lands on the same side, in
every snapshot), and stores the files (purpose `fine-tune`) in the requested line format
together with a manifest. Nothing is stored for an empty selection. A stored snapshot is a
`snapshot.created` event of the curation feed (events.py), committed with it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    LoomstackError,
    NotFound,
    Unavailable,
)
from loomstack_kit.plugins import SNAPSHOT_CREATED, CurationContext, Exporter, ExportRequest

from . import tables
from .catalog import SchemaCatalog
from .events import CurationEvents
from .examples import training_example
from .import_states import ANNOTATED

FORMATS = ("openai_chat", "alpaca", "sharegpt", "chatml")
MAX_VALIDATION_FRACTION = 0.5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# upload(project, filename, content) → file id of a stored `fine-tune` file.
Upload = Callable[[str, str, bytes], str]


@dataclass(frozen=True)
class SnapshotFilter:
    """Which annotated tasks a snapshot takes (zero values mean no limit)."""

    schema_id: str = ""
    schema_version: int = 0
    gold_only: bool = False
    min_agreement: float = 0.0
    min_rating: int = 0
    start_time: float = 0.0
    end_time: float = 0.0
    limit: int = 0
    # Leave out tasks whose annotation was auto-accepted (auto_accept.py), not a person's.
    exclude_auto_accepted: bool = False

    def check(self) -> None:
        """InvalidArgument for values out of range."""
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidArgument("min_agreement must be between 0 and 1", param="min_agreement")
        if self.min_rating < 0:
            raise InvalidArgument("min_rating must not be negative", param="min_rating")
        if self.limit < 0:
            raise InvalidArgument("limit must not be negative", param="limit")
        if self.schema_version < 0:
            raise InvalidArgument("schema_version must not be negative", param="schema_version")
        if self.start_time and self.end_time and self.end_time <= self.start_time:
            raise InvalidArgument("end_time must be after start_time", param="end_time")


@dataclass
class SnapshotRecord:
    """A stored snapshot."""

    id: str
    project: str
    name: str
    version: int
    format: str
    filter: SnapshotFilter
    validation_fraction: float
    training_file_id: str
    validation_file_id: str | None
    training_examples: int
    validation_examples: int
    duplicates_removed: int
    incomplete_skipped: int
    manifest: dict[str, Any]
    created_at: float
    # The plugin exporter that selected the examples (empty: the core selection), its options.
    exporter: str = ""
    exporter_options: dict[str, str] = field(default_factory=dict)


@dataclass
class BuiltSnapshot:
    """The examples of a snapshot before they are stored."""

    training: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    training_tasks: list[int] = field(default_factory=list)
    validation_tasks: list[int] = field(default_factory=list)
    duplicates: int = 0
    incomplete: int = 0
    auto_accepted: int = 0
    schemas: set[str] = field(default_factory=set)


# ---- formats ----------------------------------------------------------------------------------


def _parts(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return system, [m for m in messages if m["role"] != "system"]


def convert(messages: list[dict[str, str]], fmt: str) -> dict[str, Any]:
    """One example (OpenAI chat messages) as a line of the given format."""
    if fmt == "openai_chat":
        return {"messages": messages}
    system, turns = _parts(messages)
    if fmt == "alpaca":
        user = "\n\n".join(m["content"] for m in turns[:-1] if m["role"] == "user")
        line: dict[str, Any] = {"instruction": user, "input": "", "output": turns[-1]["content"]}
        if system:
            line["system"] = system
        return line
    if fmt == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return {
            "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]
        }
    if fmt == "chatml":
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return {"text": text}
    raise InvalidArgument(f"unknown format {fmt!r} (use {', '.join(FORMATS)})", param="format")


def _jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()


def example_key(messages: list[dict[str, str]]) -> str:
    """The stable identity of an example: the hash of its messages (dedupe and split)."""
    return hashlib.sha256(
        json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def is_validation(key: str, fraction: float) -> bool:
    """Deterministic split: the key's hash as a number in [0, 1) below the fraction."""
    return fraction > 0 and int(key[:16], 16) / 16**16 < fraction


# ---- building ---------------------------------------------------------------------------------


def select_tasks(engine: Engine, project: str | None, flt: SnapshotFilter) -> list[sa.Row]:
    """The annotated tasks matching the filter, oldest annotation first."""
    c = tables.tasks.c
    query = sa.select(tables.tasks).where(c.status == ANNOTATED, c.result_json.is_not(None))
    if project is not None:
        query = query.where(c.project == project)
    if flt.schema_id:
        query = query.where(c.schema_id == flt.schema_id)
    if flt.schema_version:
        query = query.where(c.schema_version == flt.schema_version)
    if flt.gold_only:
        query = query.where(c.gold.is_(True))
    if flt.min_agreement:
        query = query.where(c.agreement >= flt.min_agreement)
    if flt.min_rating:
        query = query.where(c.rating >= flt.min_rating)
    if flt.start_time:
        query = query.where(c.annotated_at >= flt.start_time)
    if flt.end_time:
        query = query.where(c.annotated_at < flt.end_time)
    if flt.exclude_auto_accepted:
        query = query.where(c.auto_accepted.is_(False))
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(c.annotated_at, c.ls_task_id)).all())


def build(
    rows: Iterable[sa.Row], catalog: SchemaCatalog, flt: SnapshotFilter, fraction: float
) -> BuiltSnapshot:
    """Examples from tasks: incomplete ones skipped, duplicates dropped, then split."""
    built = BuiltSnapshot()
    seen: set[str] = set()
    for row in rows:
        if flt.limit and len(built.training) + len(built.validation) >= flt.limit:
            break
        try:
            schema = catalog.get(row.schema_id, row.schema_version)
        except NotFound:
            built.incomplete += 1
            continue
        data = json.loads(row.data_json)
        example = training_example(schema, data, json.loads(row.result_json))
        if not example.ok:
            built.incomplete += 1
            continue
        key = example_key(example.messages)
        if key in seen:
            built.duplicates += 1
            continue
        seen.add(key)
        built.schemas.add(schema.key)
        built.auto_accepted += bool(row.auto_accepted)
        if is_validation(key, fraction):
            built.validation.append(example.as_json())
            built.validation_tasks.append(int(row.ls_task_id))
        else:
            built.training.append(example.as_json())
            built.training_tasks.append(int(row.ls_task_id))
    return built


def from_exporter(
    examples: Iterable[list[dict[str, str]]], flt: SnapshotFilter, fraction: float
) -> BuiltSnapshot:
    """A plugin exporter's examples: malformed ones skipped, duplicates dropped, then split."""
    built = BuiltSnapshot()
    seen: set[str] = set()
    for messages in examples:
        if flt.limit and len(built.training) + len(built.validation) >= flt.limit:
            break
        if not _chat_messages(messages):
            built.incomplete += 1
            continue
        key = example_key(messages)
        if key in seen:
            built.duplicates += 1
            continue
        seen.add(key)
        (built.validation if is_validation(key, fraction) else built.training).append(
            {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        )
    return built


def _chat_messages(messages: Any) -> bool:
    """Whether an exporter's example is OpenAI chat messages ending with the assistant's."""
    return (
        isinstance(messages, list)
        and len(messages) >= 2
        and all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            and m["content"].strip()
            for m in messages
        )
        and messages[-1]["role"] == "assistant"
    )


def _record(row: sa.Row) -> SnapshotRecord:
    manifest = json.loads(row.manifest_json)
    return SnapshotRecord(
        id=row.id,
        project=row.project,
        name=row.name,
        version=row.version,
        format=row.format,
        filter=SnapshotFilter(**json.loads(row.filter_json)),
        validation_fraction=row.validation_fraction,
        training_file_id=row.training_file_id,
        validation_file_id=row.validation_file_id,
        training_examples=row.training_examples,
        validation_examples=row.validation_examples,
        duplicates_removed=row.duplicates_removed,
        incomplete_skipped=row.incomplete_skipped,
        manifest=manifest,
        created_at=row.created_at,
        exporter=manifest.get("exporter", ""),
        exporter_options=dict(manifest.get("exporter_options", {})),
    )


class SnapshotStore:
    """Creates, reads and lists snapshots (synchronous; call it from a thread)."""

    def __init__(
        self,
        engine: Engine,
        catalog: SchemaCatalog,
        exporters: Mapping[str, tuple[Exporter, CurationContext]] | None = None,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        # The plugins' exporters by name, each with its plugin's context.
        self.exporters = dict(exporters or {})
        self.events = CurationEvents(engine)

    def create(
        self,
        project: str,
        name: str,
        flt: SnapshotFilter,
        *,
        fmt: str = "openai_chat",
        validation_fraction: float = 0.0,
        upload: Upload,
        exporter: str = "",
        exporter_options: Mapping[str, str] | None = None,
    ) -> SnapshotRecord:
        """Builds and stores the next version of dataset `name`."""
        if not _NAME.fullmatch(name or ""):
            raise InvalidArgument(
                "name must be 1-128 letters, digits, '_', '-' or '.', starting with a letter "
                "or digit",
                param="name",
            )
        if fmt not in FORMATS:
            raise InvalidArgument(
                f"unknown format {fmt!r} (use {', '.join(FORMATS)})", param="format"
            )
        if not 0.0 <= validation_fraction <= MAX_VALIDATION_FRACTION:
            raise InvalidArgument(
                f"validation_fraction must be between 0 and {MAX_VALIDATION_FRACTION}",
                param="validation_fraction",
            )
        flt.check()
        if flt.schema_id:
            self.catalog.get(flt.schema_id, flt.schema_version or None)
        options = dict(exporter_options or {})
        if exporter:
            built = self._export(project, exporter, options, flt, validation_fraction)
        elif options:
            raise InvalidArgument("exporter_options need an exporter", param="exporter_options")
        else:
            built = build(
                select_tasks(self.engine, project, flt), self.catalog, flt, validation_fraction
            )
        if not built.training and not built.validation:
            raise FailedPrecondition(
                ("no example matches" if exporter else "no annotated task matches the filter")
                + (
                    f" ({built.incomplete} matching tasks cannot form an example)"
                    if built.incomplete
                    else ""
                ),
                code="empty_snapshot",
            )
        if not built.training:
            # Every example hashed to validation (tiny sets): training must not be empty.
            built.training, built.validation = built.validation, []
            built.training_tasks, built.validation_tasks = built.validation_tasks, []
        version = self._next_version(project, name)
        snapshot_id = f"snap_{secrets.token_hex(12)}"
        stem = f"{name}-v{version}"
        training_file = upload(
            project,
            f"{stem}-train.jsonl",
            _jsonl(convert(e["messages"], fmt) for e in built.training),
        )
        validation_file = (
            upload(
                project,
                f"{stem}-validation.jsonl",
                _jsonl(convert(e["messages"], fmt) for e in built.validation),
            )
            if built.validation
            else None
        )
        now = time.time()
        manifest = {
            "snapshot_id": snapshot_id,
            "name": name,
            "version": version,
            "format": fmt,
            "exporter": exporter,
            "exporter_options": options,
            "filter": asdict(flt),
            "validation_fraction": validation_fraction,
            "schemas": sorted(built.schemas),
            "counts": {
                "training": len(built.training),
                "validation": len(built.validation),
                "duplicates_removed": built.duplicates,
                "incomplete_skipped": built.incomplete,
                "auto_accepted": built.auto_accepted,
            },
            "files": {"training": training_file, "validation": validation_file},
            "task_ids": {"training": built.training_tasks, "validation": built.validation_tasks},
            "created_at": now,
        }
        values = {
            "id": snapshot_id,
            "project": project,
            "name": name,
            "version": version,
            "format": fmt,
            "filter_json": json.dumps(asdict(flt)),
            "validation_fraction": validation_fraction,
            "training_file_id": training_file,
            "validation_file_id": validation_file,
            "training_examples": len(built.training),
            "validation_examples": len(built.validation),
            "duplicates_removed": built.duplicates,
            "incomplete_skipped": built.incomplete,
            "manifest_json": json.dumps(manifest),
            "created_at": now,
        }
        for _ in range(5):
            try:
                with write_transaction(self.engine) as conn:
                    conn.execute(tables.snapshots.insert().values(**values))
                    self.events.record(
                        conn,
                        SNAPSHOT_CREATED,
                        project,
                        {
                            "snapshot_id": snapshot_id,
                            "name": name,
                            "version": values["version"],
                            "format": fmt,
                            "exporter": exporter,
                            "training_examples": len(built.training),
                        },
                    )
                break
            except IntegrityError:
                # Another snapshot of the same name took this version a moment ago.
                values["version"] = manifest["version"] = self._next_version(project, name)
                values["manifest_json"] = json.dumps(manifest)
        return self.get(project, snapshot_id)

    def _export(
        self,
        project: str,
        name: str,
        options: dict[str, str],
        flt: SnapshotFilter,
        fraction: float,
    ) -> BuiltSnapshot:
        """The examples a plugin's exporter selects."""
        found = self.exporters.get(name)
        if found is None:
            known = ", ".join(sorted(self.exporters)) or "none"
            raise InvalidArgument(
                f"unknown exporter {name!r} (exporters: {known})", param="exporter"
            )
        exporter, context = found
        for option in options:
            if option not in exporter.options:
                allowed = ", ".join(exporter.options) or "none"
                raise InvalidArgument(
                    f"exporter {name!r} has no option {option!r} (options: {allowed})",
                    param=f"exporter_options.{option}",
                )
        request = ExportRequest(
            project=project,
            schema_id=flt.schema_id,
            gold_only=flt.gold_only,
            limit=flt.limit,
            options=options,
        )
        try:
            return from_exporter(exporter.export(request, context), flt, fraction)
        except LoomstackError:
            raise
        except Exception as exc:  # plugin code: its store may be down
            raise Unavailable(
                f"exporter {name!r} failed: {type(exc).__name__}: {exc}", code="exporter_failed"
            ) from exc

    def _next_version(self, project: str, name: str) -> int:
        with self.engine.connect() as conn:
            current = conn.execute(
                sa.select(sa.func.max(tables.snapshots.c.version)).where(
                    tables.snapshots.c.project == project, tables.snapshots.c.name == name
                )
            ).scalar()
        return int(current or 0) + 1

    def get(self, project: str | None, snapshot_id: str) -> SnapshotRecord:
        """One snapshot of the project; NotFound otherwise."""
        query = sa.select(tables.snapshots).where(tables.snapshots.c.id == snapshot_id)
        if project is not None:
            query = query.where(tables.snapshots.c.project == project)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no snapshot {snapshot_id!r}", param="snapshot_id")
        return _record(row)

    def list_snapshots(
        self, project: str | None, name: str = "", limit: int = 100, offset: int = 0
    ) -> list[SnapshotRecord]:
        """Snapshots, newest first."""
        c = tables.snapshots.c
        query = sa.select(tables.snapshots)
        if project is not None:
            query = query.where(c.project == project)
        if name:
            query = query.where(c.name == name)
        query = query.order_by(c.created_at.desc(), c.id).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).all()]
