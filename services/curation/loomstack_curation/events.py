"""The curation event feed: annotations recorded, gold stars given or taken, snapshots stored.

An event is written in the transaction of the change it reports, so it exists exactly when the
change committed. Consumers (plugins' result handlers, webhook delivery) read it after a cursor
(`ListEvents`) and store the sequence of the last event they handled: at-least-once delivery.
The event types are the plugin contract's (loomstack_kit.plugins); `origin` in an event's data
says who made the change.

A cursor only works if no event commits with a sequence below one a reader has already seen:
SQLite has one writer at a time, and on PostgreSQL every transaction that records an event
takes one advisory lock first, held to its commit. Callers record their events after their
other writes: the lock is then held for little more than the commit, and a transaction that
holds it never waits for rows of one that waits for it.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.plugins import Feed, FeedEvent

from . import tables

FEED: Feed = "curation"
MAX_WAIT_SECONDS = 30
# Who made a change; a plugin's own changes are `plugin:<name>`.
ORIGIN_API = "api"
ORIGIN_LABEL_STUDIO = "label_studio"
ORIGIN_AUTO_ACCEPT = "auto_accept"
_LOCK_KEY = zlib.crc32(b"curation_events")


class CurationEvents:
    """Records events in the caller's transaction and reads them after a cursor."""

    def __init__(self, engine: Engine, poll_seconds: float = 0.5) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds

    def record(self, conn: sa.Connection, type: str, project: str, data: Mapping[str, Any]) -> None:
        """Appends an event in the caller's transaction (it commits or rolls back with it)."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
        conn.execute(
            tables.events.insert().values(
                type=type,
                project=project,
                data_json=json.dumps(dict(data), sort_keys=True, ensure_ascii=False),
                created_at=time.time(),
            )
        )

    def after(self, project: str | None, after_sequence: int, limit: int) -> list[FeedEvent]:
        """Events with a sequence greater than `after_sequence`, oldest first: a project's own,
        or every project's (None, for consumers inside the service)."""
        c = tables.events.c
        query = sa.select(tables.events).where(c.sequence > after_sequence)
        if project is not None:
            query = query.where(c.project == project)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(c.sequence).limit(limit)).all()
        return [
            FeedEvent(
                feed=FEED,
                sequence=int(row.sequence),
                type=row.type,
                project=row.project,
                data=json.loads(row.data_json),
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def wait(
        self, project: str | None, after_sequence: int, limit: int, wait_seconds: float
    ) -> list[FeedEvent]:
        """`after`, waiting up to `wait_seconds` (at most MAX_WAIT_SECONDS) for an event when
        there is none yet; the table is looked at every `poll_seconds` (it is the only place
        that knows, whichever process wrote the event)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait_seconds, 0), MAX_WAIT_SECONDS)
        while True:
            events = await asyncio.to_thread(self.after, project, after_sequence, limit)
            left = deadline - loop.time()
            if events or left <= 0:
                return events
            await asyncio.sleep(min(self.poll_seconds, left))
