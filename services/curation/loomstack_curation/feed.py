"""The consumer of the inference service's batch event feed: an idempotent, resumable reader.

Each page of events is handled in ONE transaction with the cursor update: a completed batch
with `metadata.schema_type` is queued for import (once, whatever the number of deliveries;
`metadata.curation_auto_accept` asks for its predictions to be accepted, see auto_accept.py),
other events are skipped, and the cursor moves past them. A crash before the commit replays
the page; a crash after it never loses an event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction

from . import auto_accept, tables
from .import_queue import ImportQueue

CONSUMER = "curation-import"
SCHEMA_TYPE_KEY = "schema_type"


@dataclass(frozen=True)
class BatchEvent:
    """A batch lifecycle event, as much of it as the import needs."""

    sequence: int
    type: str
    batch_id: str
    project: str
    model: str
    input_file_id: str
    output_file_id: str
    failed_lines: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


class FeedConsumer:
    """Stores the cursor and queues imports."""

    def __init__(self, engine: Engine, queue: ImportQueue, consumer: str = CONSUMER) -> None:
        self.engine = engine
        self.queue = queue
        self.consumer = consumer

    def cursor(self) -> int:
        """The sequence of the last handled event (0 before the first)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(tables.feed_cursors.c.sequence).where(
                    tables.feed_cursors.c.consumer == self.consumer
                )
            ).scalar()
        return int(value or 0)

    def handle(self, events: Iterable[BatchEvent]) -> int:
        """Handles a page of events; returns how many imports were queued."""
        ordered = sorted(events, key=lambda e: e.sequence)
        if not ordered:
            return 0
        queued = 0
        with write_transaction(self.engine) as conn:
            current = conn.execute(
                sa.select(tables.feed_cursors.c.sequence).where(
                    tables.feed_cursors.c.consumer == self.consumer
                )
            ).scalar()
            position = int(current or 0)
            for event in ordered:
                if event.sequence <= position:
                    continue
                schema_type = event.metadata.get(SCHEMA_TYPE_KEY, "").strip()
                if event.type == "batch.completed" and schema_type and event.output_file_id:
                    queued += self.queue.enqueue(
                        conn,
                        batch_id=event.batch_id,
                        project=event.project,
                        schema_type=schema_type,
                        model=event.model,
                        input_file_id=event.input_file_id,
                        output_file_id=event.output_file_id,
                        failed_lines=event.failed_lines,
                        auto_accept=auto_accept.requested(event.metadata),
                    )
                position = event.sequence
            values = {"sequence": position, "updated_at": time.time()}
            if current is None:
                conn.execute(tables.feed_cursors.insert().values(consumer=self.consumer, **values))
            else:
                conn.execute(
                    tables.feed_cursors.update()
                    .where(tables.feed_cursors.c.consumer == self.consumer)
                    .values(**values)
                )
        return queued
