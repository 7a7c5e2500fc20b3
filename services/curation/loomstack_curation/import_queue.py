"""The import queue: a finished batch is queued once (feed.py), due imports are taken oldest
first, retryable failures wait with exponential backoff, and imports that failed for an unknown
schema wait outside the queue until the catalog resolves it (so any number of them never delays
a new import). The import itself is importer.py; the API's reads are import_records.py."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import LoomstackError, NotFound

from . import tables
from .catalog import SchemaCatalog
from .import_states import FAILED, QUEUED, RUNNING

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedImport:
    """A due import: what the worker needs to fetch the batch's files."""

    batch_id: str
    project: str
    schema_type: str
    model: str
    input_file_id: str
    output_file_id: str
    auto_accept: bool = False


class ImportQueue:
    """The imports table as a queue (synchronous; call it from a thread)."""

    def __init__(
        self,
        engine: Engine,
        catalog: SchemaCatalog,
        *,
        retry_base: float = 2.0,
        retry_max: float = 300.0,
        allow_auto_accept: bool = True,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.allow_auto_accept = allow_auto_accept
        # The catalog generation `revive` last looked at (None: not since this process started).
        self._revived_generation: int | None = None

    def enqueue(
        self,
        conn: sa.Connection,
        *,
        batch_id: str,
        project: str,
        schema_type: str,
        model: str,
        input_file_id: str,
        output_file_id: str,
        failed_lines: int = 0,
        auto_accept: bool = False,
    ) -> bool:
        """Queues a batch once (a repeated event changes nothing); True if it was new."""
        exists = conn.execute(
            sa.select(tables.imports.c.batch_id).where(tables.imports.c.batch_id == batch_id)
        ).first()
        if exists:
            return False
        if auto_accept and not self.allow_auto_accept:
            log.warning(
                "auto-accept is not allowed here: the batch's tasks wait for people",
                extra={"batch_id": batch_id},
            )
            auto_accept = False
        now = time.time()
        conn.execute(
            tables.imports.insert().values(
                batch_id=batch_id,
                project=project,
                schema_type=schema_type,
                model=model,
                input_file_id=input_file_id,
                output_file_id=output_file_id,
                failed_lines=failed_lines,
                skipped_lines=failed_lines,
                auto_accept=auto_accept,
                status=QUEUED,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        return True

    def due(self, now: float | None = None, limit: int = 10) -> list[QueuedImport]:
        """Imports whose attempt is due, oldest first: queued ones past their time and
        interrupted ones.

        A failed import (unknown schema) is never among them, however many pile up: it waits
        outside the queue and goes back into it when the catalog can resolve its schema
        (`revive`), so it can never take the place of a new import in the page.
        """
        now = time.time() if now is None else now
        if self._revived_generation != self.catalog.generation:
            self.revive(now)
        c = tables.imports.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tables.imports)
                .where(c.status.in_((QUEUED, RUNNING)), c.next_attempt_at <= now)
                .order_by(c.next_attempt_at, c.batch_id)
                .limit(limit)
            ).all()
        return [
            QueuedImport(
                row.batch_id,
                row.project,
                row.schema_type,
                row.model,
                row.input_file_id,
                row.output_file_id,
                bool(row.auto_accept),
            )
            for row in rows
        ]

    def revive(self, now: float | None = None) -> int:
        """Queues again the imports that failed for an unknown schema the catalog knows now;
        returns how many. `due` calls it once per catalog change (not per poll): the distinct
        schema types of the failed imports are looked at, not each of them."""
        now = time.time() if now is None else now
        generation = self.catalog.generation
        c = tables.imports.c
        waiting = (c.status == FAILED, c.error_code == "unknown_schema")
        with self.engine.connect() as conn:
            schema_types = list(
                conn.execute(sa.select(c.schema_type).where(*waiting).distinct()).scalars()
            )
        known = []
        for schema_type in schema_types:
            try:
                self.catalog.resolve(schema_type)
            except NotFound:
                continue
            known.append(schema_type)
        revived = 0
        for start in range(0, len(known), 500):
            with write_transaction(self.engine) as conn:
                revived += (
                    conn.execute(
                        tables.imports.update()
                        .where(*waiting, c.schema_type.in_(known[start : start + 500]))
                        .values(status=QUEUED, next_attempt_at=now, updated_at=now)
                    ).rowcount
                    or 0
                )
        self._revived_generation = generation
        if revived:
            log.info("imports queued again: their schema is known now", extra={"count": revived})
        return revived

    def update(self, batch_id: str, **values: Any) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.imports.update()
                .where(tables.imports.c.batch_id == batch_id)
                .values(updated_at=time.time(), **values)
            )

    def retry_later(self, batch_id: str, error: str) -> float:
        """Records a retryable failure; returns the delay before the next attempt."""
        with self.engine.connect() as conn:
            attempts = conn.execute(
                sa.select(tables.imports.c.attempts).where(tables.imports.c.batch_id == batch_id)
            ).scalar_one()
        delay = min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1))
        self.update(
            batch_id,
            status=QUEUED,
            error=error,
            error_code="unavailable",
            next_attempt_at=time.time() + delay,
        )
        return delay

    def fail(self, batch_id: str, error: LoomstackError) -> None:
        """Records a failure that waits for its cause to go away (no timed retry)."""
        self.update(batch_id, status=FAILED, error=error.message, error_code=error.code)

    def start_attempt(self, batch_id: str) -> None:
        """Marks an import running and counts the attempt."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.imports.update()
                .where(tables.imports.c.batch_id == batch_id)
                .values(
                    status=RUNNING,
                    attempts=tables.imports.c.attempts + 1,
                    updated_at=time.time(),
                )
            )

    def retry_much_later(self, batch_id: str, error: str) -> None:
        """Records an unexpected failure: tried again after the longest backoff."""
        self.update(
            batch_id,
            status=QUEUED,
            error=error,
            error_code="error",
            next_attempt_at=time.time() + self.retry_max,
        )
