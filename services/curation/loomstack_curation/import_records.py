"""Reads of the import queue for the API: typed views of the imports table, newest first or one
batch's (the queue itself is import_queue.py, the import importer.py)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.errors import NotFound

from . import tables


@dataclass(frozen=True)
class ImportView:
    """One batch's import as the API shows it."""

    batch_id: str
    project: str
    schema_type: str
    status: str
    attempts: int
    error: str
    result_lines: int
    imported_tasks: int
    skipped_lines: int
    prediction_problems: int
    ls_project_id: int | None
    next_attempt_at: float
    created_at: float
    updated_at: float
    auto_accept: bool
    auto_accepted_tasks: int


def _view(row: sa.Row) -> ImportView:
    return ImportView(
        batch_id=row.batch_id,
        project=row.project,
        schema_type=row.schema_type,
        status=row.status,
        attempts=row.attempts,
        error=row.error,
        result_lines=row.result_lines,
        imported_tasks=row.imported_tasks,
        skipped_lines=row.skipped_lines,
        prediction_problems=row.prediction_problems,
        ls_project_id=row.ls_project_id,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        auto_accept=bool(row.auto_accept),
        auto_accepted_tasks=row.auto_accepted_tasks,
    )


class ImportRecords:
    """The imports a project may read."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def page(self, project: str | None, limit: int = 100, offset: int = 0) -> list[ImportView]:
        """Imports, newest first."""
        return list_imports(self.engine, project, limit, offset)

    def get(self, project: str | None, batch_id: str) -> ImportView:
        """One batch's import; NotFound if the batch was never queued."""
        return get_import(self.engine, project, batch_id)


def list_imports(
    engine: Engine, project: str | None, limit: int = 100, offset: int = 0
) -> list[ImportView]:
    """Imports, newest first."""
    query = sa.select(tables.imports)
    if project is not None:
        query = query.where(tables.imports.c.project == project)
    query = query.order_by(tables.imports.c.created_at.desc(), tables.imports.c.batch_id)
    with engine.connect() as conn:
        rows = conn.execute(query.limit(limit).offset(offset)).all()
    return [_view(r) for r in rows]


def get_import(engine: Engine, project: str | None, batch_id: str) -> ImportView:
    """One batch's import; NotFound if the batch was never queued."""
    query = sa.select(tables.imports).where(tables.imports.c.batch_id == batch_id)
    if project is not None:
        query = query.where(tables.imports.c.project == project)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        raise NotFound(
            f"no import for batch {batch_id!r} (only completed batches with "
            "metadata.schema_type are imported)",
            param="batch_id",
        )
    return _view(row)
