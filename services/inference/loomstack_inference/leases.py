"""The shard lease queue: claim, renew, commit results, complete, release.

PostgreSQL: claims use `FOR UPDATE SKIP LOCKED`, so any number of engines share the queue.
SQLite: claims run in `BEGIN IMMEDIATE` transactions, which serialize writers on one machine.
A lease that is not renewed expires and its shard is claimed again; results already committed
are skipped, and `UNIQUE(batch_id, custom_id)` makes a second insert of a line a no-op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from loomstack_kit.database import is_sqlite, write_transaction

from .statuses import BatchStatus, ShardStatus
from .tables import batch_requests, batches, results, shards


@dataclass(frozen=True)
class Lease:
    """A claimed shard."""

    shard_id: int
    batch_id: str
    seq: int
    start_line: int
    end_line: int
    model: str


@dataclass(frozen=True)
class PendingLine:
    """A line of a claimed shard that has no committed result yet."""

    line_no: int
    custom_id: str
    body_json: str


@dataclass(frozen=True)
class ResultRow:
    """One finished line, ready to commit."""

    line_no: int
    custom_id: str
    ok: bool
    line_json: str
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class CommitOutcome:
    """What the runner learns when it commits a micro-batch."""

    still_owned: bool
    stop: bool


class LeaseQueue:
    """Shard leases of one runner (identified by `owner`)."""

    def __init__(self, engine: Engine, owner: str, lease_seconds: float) -> None:
        self.engine = engine
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._sqlite = is_sqlite(engine)
        self._insert = (sqlite.insert if self._sqlite else postgresql.insert)(results)

    def claim(self, models: list[str]) -> Lease | None:
        """Takes the next shard: priority, then FIFO by batch creation, then shard order."""
        now = time.time()
        with write_transaction(self.engine) as conn:
            query = (
                sa.select(shards)
                .join(batches, batches.c.id == shards.c.batch_id)
                .where(
                    shards.c.model.in_(models),
                    batches.c.status == BatchStatus.IN_PROGRESS,
                    batches.c.expires_at > now,
                    sa.or_(
                        shards.c.status == ShardStatus.PENDING,
                        sa.and_(
                            shards.c.status == ShardStatus.LEASED, shards.c.lease_expires_at < now
                        ),
                    ),
                )
                .order_by(shards.c.priority.desc(), shards.c.batch_created_at, shards.c.seq)
                .limit(1)
            )
            if not self._sqlite:
                query = query.with_for_update(skip_locked=True, of=shards)
            row = conn.execute(query).first()
            if row is None:
                return None
            conn.execute(
                shards.update()
                .where(shards.c.id == row.id)
                .values(
                    status=ShardStatus.LEASED,
                    lease_owner=self.owner,
                    lease_expires_at=now + self.lease_seconds,
                    attempts=shards.c.attempts + 1,
                )
            )
            conn.execute(
                batches.update()
                .where(batches.c.id == row.batch_id, batches.c.in_progress_at.is_(None))
                .values(in_progress_at=now)
            )
        return Lease(row.id, row.batch_id, row.seq, row.start_line, row.end_line, row.model)

    def pending_lines(self, lease: Lease) -> list[PendingLine]:
        """The shard's lines without a committed result (all of them on a first run)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    batch_requests.c.line_no, batch_requests.c.custom_id, batch_requests.c.body_json
                )
                .where(
                    batch_requests.c.batch_id == lease.batch_id,
                    batch_requests.c.line_no.between(lease.start_line, lease.end_line),
                    ~sa.exists().where(
                        results.c.batch_id == lease.batch_id,
                        results.c.line_no == batch_requests.c.line_no,
                    ),
                )
                .order_by(batch_requests.c.line_no)
            ).all()
        return [PendingLine(r.line_no, r.custom_id, r.body_json) for r in rows]

    def commit(self, lease: Lease, rows: list[ResultRow]) -> CommitOutcome:
        """Inserts results, recounts the shard and renews its lease, in one transaction."""
        now = time.time()
        with write_transaction(self.engine) as conn:
            if rows:
                conn.execute(
                    self._insert.on_conflict_do_nothing(),
                    [
                        {
                            "batch_id": lease.batch_id,
                            "line_no": r.line_no,
                            "custom_id": r.custom_id,
                            "ok": r.ok,
                            "line_json": r.line_json,
                            "input_tokens": r.input_tokens,
                            "cached_tokens": r.cached_tokens,
                            "output_tokens": r.output_tokens,
                            "runner": self.owner,
                        }
                        for r in rows
                    ],
                )
            in_shard = sa.and_(
                results.c.batch_id == lease.batch_id,
                results.c.line_no.between(lease.start_line, lease.end_line),
            )
            sums = conn.execute(
                sa.select(
                    sa.func.count().filter(results.c.ok.is_(True)),
                    sa.func.count().filter(results.c.ok.is_(False)),
                    sa.func.coalesce(sa.func.sum(results.c.input_tokens), 0),
                    sa.func.coalesce(sa.func.sum(results.c.cached_tokens), 0),
                    sa.func.coalesce(sa.func.sum(results.c.output_tokens), 0),
                ).where(in_shard)
            ).one()
            updated = conn.execute(
                shards.update()
                .where(
                    shards.c.id == lease.shard_id,
                    shards.c.lease_owner == self.owner,
                    shards.c.status == ShardStatus.LEASED,
                )
                .values(
                    completed=sums[0],
                    failed=sums[1],
                    input_tokens=sums[2],
                    cached_tokens=sums[3],
                    output_tokens=sums[4],
                    lease_expires_at=now + self.lease_seconds,
                )
            ).rowcount
            batch = conn.execute(
                sa.select(batches.c.status, batches.c.expires_at).where(
                    batches.c.id == lease.batch_id
                )
            ).one()
        stop = batch.status != BatchStatus.IN_PROGRESS or batch.expires_at <= now
        return CommitOutcome(still_owned=updated == 1, stop=stop)

    def complete(self, lease: Lease) -> None:
        """Marks the shard done (every line has a result)."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                shards.update()
                .where(shards.c.id == lease.shard_id, shards.c.lease_owner == self.owner)
                .values(status=ShardStatus.DONE, lease_owner=None, lease_expires_at=None)
            )

    def stop(self, lease: Lease) -> None:
        """Gives a shard up because its batch is cancelling or expired."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                shards.update()
                .where(shards.c.id == lease.shard_id, shards.c.lease_owner == self.owner)
                .values(status=ShardStatus.STOPPED, lease_owner=None, lease_expires_at=None)
            )

    def renew_all(self) -> int:
        """Extends every lease this runner holds (the heartbeat)."""
        with write_transaction(self.engine) as conn:
            return conn.execute(
                shards.update()
                .where(shards.c.lease_owner == self.owner, shards.c.status == ShardStatus.LEASED)
                .values(lease_expires_at=time.time() + self.lease_seconds)
            ).rowcount

    def release_all(self) -> int:
        """Returns every held shard to the queue (graceful stop): the next runner resumes it."""
        with write_transaction(self.engine) as conn:
            return conn.execute(
                shards.update()
                .where(shards.c.lease_owner == self.owner, shards.c.status == ShardStatus.LEASED)
                .values(status=ShardStatus.PENDING, lease_owner=None, lease_expires_at=None)
            ).rowcount


def release_previous_leases(engine: Engine, engine_id: str) -> int:
    """At start, hands back the shards an earlier run of this same engine id still holds.

    A restarted pod (same engine id, new process) resumes its work at once instead of waiting
    for the old leases to expire.
    """
    with write_transaction(engine) as conn:
        return conn.execute(
            shards.update()
            .where(
                shards.c.lease_owner.like(f"{engine_id}:%"), shards.c.status == ShardStatus.LEASED
            )
            .values(status=ShardStatus.PENDING, lease_owner=None, lease_expires_at=None)
        ).rowcount
