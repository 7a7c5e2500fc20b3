"""Where each plugin result handler is on its feed, and the events it failed on.

Every handler has its own cursor per feed. An event it raises on is stored here (`retrying`,
with the error and when to try next) in the same transaction that moves its cursor past it,
so a failing handler never holds up its feed, the other handlers or the import, and nothing is
lost: the retry loop delivers it again with exponential backoff; after `max_attempts` it is
`dead` (the dead-letter list), until an admin asks for a retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from loomstack_kit.plugins import Feed, FeedEvent

from . import tables


class DeliveryStatus(StrEnum):
    """A failed delivery's state."""

    RETRYING = "retrying"
    DEAD = "dead"


@dataclass(frozen=True)
class Delivery:
    """One event a handler failed on."""

    id: int
    plugin: str
    handler: str
    event: FeedEvent
    status: DeliveryStatus
    attempts: int
    error: str
    next_attempt_at: float
    created_at: float
    updated_at: float


def _event_json(event: FeedEvent) -> str:
    return json.dumps(
        {
            "feed": event.feed,
            "sequence": event.sequence,
            "type": event.type,
            "project": event.project,
            "data": dict(event.data),
            "created_at": event.created_at,
        },
        sort_keys=True,
        default=str,
    )


def _delivery(row: sa.Row) -> Delivery:
    raw = json.loads(row.event_json)
    return Delivery(
        id=row.id,
        plugin=row.plugin,
        handler=row.handler,
        event=FeedEvent(
            feed=raw["feed"],
            sequence=raw["sequence"],
            type=raw["type"],
            project=raw["project"],
            data=raw["data"],
            created_at=raw.get("created_at", 0.0),
        ),
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        error=row.error,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class PluginDeliveries:
    """The handlers' cursors and failed deliveries, in curation's database."""

    def __init__(
        self,
        engine: Engine,
        *,
        retry_base: float = 2.0,
        retry_max: float = 300.0,
        max_attempts: int = 8,
    ) -> None:
        self.engine = engine
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts

    # ---- cursors ------------------------------------------------------------------------------

    def cursors(self, feed: Feed) -> dict[tuple[str, str], int]:
        """(plugin, handler) → the sequence of the last event it handled on this feed."""
        c = tables.plugin_cursors.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.plugin, c.handler, c.sequence).where(c.feed == feed)
            ).all()
        return {(r.plugin, r.handler): int(r.sequence) for r in rows}

    def advance(
        self,
        plugin: str,
        handler: str,
        feed: Feed,
        sequence: int,
        failed: FeedEvent | None = None,
        error: str = "",
    ) -> None:
        """Moves a cursor to `sequence`, storing the event it failed on (if any) with it."""
        with write_transaction(self.engine) as conn:
            if failed is not None:
                self._store_failure(conn, plugin, handler, failed, error)
            self._move(conn, plugin, handler, feed, sequence)

    @staticmethod
    def _move(conn: sa.Connection, plugin: str, handler: str, feed: Feed, sequence: int) -> None:
        t = tables.plugin_cursors
        where = sa.and_(t.c.plugin == plugin, t.c.handler == handler, t.c.feed == feed)
        now = time.time()
        current = conn.execute(sa.select(t.c.sequence).where(where)).scalar()
        if current is None:
            conn.execute(
                t.insert().values(
                    plugin=plugin, handler=handler, feed=feed, sequence=sequence, updated_at=now
                )
            )
        elif sequence > current:
            conn.execute(t.update().where(where).values(sequence=sequence, updated_at=now))

    def _store_failure(
        self, conn: sa.Connection, plugin: str, handler: str, event: FeedEvent, error: str
    ) -> None:
        d = tables.plugin_deliveries
        now = time.time()
        exists = conn.execute(
            sa.select(d.c.id).where(
                d.c.plugin == plugin,
                d.c.handler == handler,
                d.c.feed == event.feed,
                d.c.sequence == event.sequence,
            )
        ).first()
        if exists is not None:  # a replay after a crash: it is stored already
            return
        conn.execute(
            d.insert().values(
                plugin=plugin,
                handler=handler,
                feed=event.feed,
                sequence=event.sequence,
                event_type=event.type,
                project=event.project,
                event_json=_event_json(event),
                status=DeliveryStatus.RETRYING if self.max_attempts > 1 else DeliveryStatus.DEAD,
                attempts=1,
                error=error[:4000],
                next_attempt_at=now + self.retry_base,
                created_at=now,
                updated_at=now,
            )
        )

    # ---- retries ------------------------------------------------------------------------------

    def due(
        self, limit: int = 50, now: float | None = None, plugins: Collection[str] | None = None
    ) -> list[Delivery]:
        """Retrying deliveries whose next attempt is due, oldest first (of `plugins` only, when
        given: a disabled plugin's deliveries wait untouched and never crowd out the others)."""
        d = tables.plugin_deliveries
        moment = time.time() if now is None else now
        query = sa.select(d).where(
            d.c.status == DeliveryStatus.RETRYING, d.c.next_attempt_at <= moment
        )
        if plugins is not None:
            query = query.where(d.c.plugin.in_(sorted(plugins)))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(d.c.next_attempt_at, d.c.id).limit(limit)).all()
        return [_delivery(r) for r in rows]

    def delivered(self, delivery_id: int) -> None:
        """A retry succeeded: the delivery is done and leaves the list."""
        d = tables.plugin_deliveries
        with write_transaction(self.engine) as conn:
            conn.execute(d.delete().where(d.c.id == delivery_id))

    def failed_again(self, delivery: Delivery, error: str) -> Delivery:
        """A retry failed: the next one later, or `dead` after the last attempt."""
        attempts = delivery.attempts + 1
        now = time.time()
        dead = attempts >= self.max_attempts
        delay = min(self.retry_max, self.retry_base * 2 ** (attempts - 1))
        d = tables.plugin_deliveries
        with write_transaction(self.engine) as conn:
            conn.execute(
                d.update()
                .where(d.c.id == delivery.id)
                .values(
                    attempts=attempts,
                    error=error[:4000],
                    status=DeliveryStatus.DEAD if dead else DeliveryStatus.RETRYING,
                    next_attempt_at=now + delay,
                    updated_at=now,
                )
            )
        return self.get(delivery.id)

    # ---- the admin's view ---------------------------------------------------------------------

    def get(self, delivery_id: int) -> Delivery:
        """One delivery; NotFound names it."""
        d = tables.plugin_deliveries
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(d).where(d.c.id == delivery_id)).first()
        if row is None:
            raise NotFound(f"no plugin delivery {delivery_id}", param="delivery_id")
        return _delivery(row)

    def list(
        self, status: str = "", plugin: str = "", limit: int = 20, after: int = 0
    ) -> list[Delivery]:
        """Failed deliveries (every status, or one), oldest first, after the id `after`."""
        d = tables.plugin_deliveries
        query = sa.select(d).where(d.c.id > after)
        if status:
            try:
                query = query.where(d.c.status == DeliveryStatus(status))
            except ValueError:
                valid = ", ".join(s.value for s in DeliveryStatus)
                raise InvalidArgument(
                    f"unknown delivery status {status!r} (use {valid})", param="status"
                ) from None
        if plugin:
            query = query.where(d.c.plugin == plugin)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(d.c.id).limit(limit)).all()
        return [_delivery(r) for r in rows]

    def retry(self, delivery_id: int) -> Delivery:
        """An admin's retry of a dead delivery: due now, with its attempts counted afresh."""
        delivery = self.get(delivery_id)
        if delivery.status is not DeliveryStatus.DEAD:
            raise FailedPrecondition(
                f"plugin delivery {delivery_id} is {delivery.status.value}, not dead: it is "
                "retried already",
                param="delivery_id",
            )
        d = tables.plugin_deliveries
        now = time.time()
        with write_transaction(self.engine) as conn:
            conn.execute(
                d.update()
                .where(d.c.id == delivery_id)
                .values(
                    status=DeliveryStatus.RETRYING, attempts=0, next_attempt_at=now, updated_at=now
                )
            )
        return self.get(delivery_id)
