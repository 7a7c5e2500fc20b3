"""The batch state machine: create (validate into rows and shards), read, cancel, expire, finalize.

Statuses follow OpenAI: `validating → in_progress → finalizing → completed`, `failed`,
`cancelling → cancelled`, `expired`. Counts and usage are sums over the batch's shards, which the
runners update in the same transaction as the results they commit.
"""

from __future__ import annotations

import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import FailedPrecondition, InvalidArgument, NotFound

from .files import BATCH_OUTPUT_PURPOSE, FileStore
from .ids import new_id
from .registry import Registry
from .statuses import TERMINAL, UNFINISHED, BatchStatus, ShardStatus
from .tables import batch_events, batch_requests, batches, results, shards
from .validation import RequestLine, ValidationReport, parse_batch_input

COMPLETION_WINDOWS = {"24h": 24 * 3600}
MAX_METADATA_PAIRS, MAX_KEY, MAX_VALUE = 16, 64, 512
INSERT_CHUNK = 500
# A batch's staged lines stay in memory up to this size, then go to a temporary file.
STAGE_IN_MEMORY_BYTES = 8 * 1024 * 1024
_STAGED = struct.Struct("<qII")  # line number, custom_id bytes, body bytes
FINALIZE_RETRY_SECONDS = 120.0


@dataclass
class BatchView:
    """A batch with its derived counts, usage and queue estimates."""

    id: str
    project: str
    input_file_id: str
    endpoint: str
    completion_window: str
    model: str
    status: str
    priority: int
    metadata: dict[str, str]
    errors: list[dict[str, object]]
    total: int
    output_file_id: str | None
    error_file_id: str | None
    times: dict[str, float | None]
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    queue_position: int = 0
    estimated_start_at: float | None = None
    estimated_finish_at: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


_TIME_COLUMNS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
_SUMS = sa.select(
    shards.c.batch_id,
    sa.func.sum(shards.c.completed).label("completed"),
    sa.func.sum(shards.c.failed).label("failed"),
    sa.func.sum(shards.c.input_tokens).label("input_tokens"),
    sa.func.sum(shards.c.cached_tokens).label("cached_tokens"),
    sa.func.sum(shards.c.output_tokens).label("output_tokens"),
).group_by(shards.c.batch_id)

# The read path's statements, built once with bind parameters: clients poll GetBatch, and on
# SQLite building a Core statement costs several times more than running it.
_BY_ID = sa.select(batches).where(batches.c.id == sa.bindparam("batch_id"))
_BY_ID_IN_PROJECT = _BY_ID.where(batches.c.project == sa.bindparam("project"))
_SUMS_OF = _SUMS.where(shards.c.batch_id == sa.bindparam("batch_id"))
_AHEAD = sa.select(
    sa.func.count(sa.distinct(shards.c.batch_id)),
    sa.func.coalesce(sa.func.sum(shards.c.end_line - shards.c.start_line + 1), 0),
).where(
    shards.c.model == sa.bindparam("model"),
    shards.c.status.in_(UNFINISHED),
    shards.c.batch_id != sa.bindparam("batch_id"),
    sa.or_(
        shards.c.priority > sa.bindparam("priority"),
        sa.and_(
            shards.c.priority == sa.bindparam("priority"),
            shards.c.batch_created_at < sa.bindparam("created_at"),
        ),
    ),
)


def validate_metadata(metadata: dict[str, str]) -> None:
    """OpenAI's limits: at most 16 pairs, keys ≤ 64 and values ≤ 512 characters."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidArgument(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
            param="metadata",
            code="invalid_metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_KEY:
            raise InvalidArgument(
                f"metadata key {key[:20]!r}… is {len(key)} characters; at most {MAX_KEY}",
                param=f"metadata.{key[:20]}",
                code="invalid_metadata",
            )
        if len(value) > MAX_VALUE:
            raise InvalidArgument(
                f"metadata value of {key!r} is {len(value)} characters; at most {MAX_VALUE}",
                param=f"metadata.{key}",
                code="invalid_metadata",
            )


class Batches:
    """Batch operations on the inference database."""

    def __init__(
        self, engine: Engine, file_store: FileStore, *, shard_lines: int, max_lines: int
    ) -> None:
        self.engine = engine
        self.files = file_store
        self.registry = Registry(engine)
        self.shard_lines = shard_lines
        self.max_lines = max_lines

    # -- create --------------------------------------------------------------------------------

    def create(
        self,
        project: str,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str],
        priority: int = 0,
    ) -> BatchView:
        """Validates the file into request rows and shards in one transaction, then queues it."""
        if endpoint != "/v1/chat/completions":
            raise InvalidArgument(
                f"endpoint {endpoint!r} is not supported; use /v1/chat/completions",
                param="endpoint",
                code="invalid_endpoint",
            )
        if completion_window not in COMPLETION_WINDOWS:
            raise InvalidArgument(
                f"completion_window must be '24h', got {completion_window!r}",
                param="completion_window",
                code="invalid_completion_window",
            )
        if priority not in (-1, 0, 1):
            raise InvalidArgument(
                f"priority must be -1, 0 or 1, got {priority}",
                param="priority",
                code="invalid_priority",
            )
        validate_metadata(metadata)
        file = self.files.get(project, input_file_id)
        if file.purpose != "batch":
            raise InvalidArgument(
                f"file {input_file_id!r} has purpose {file.purpose!r}; "
                "a batch input needs purpose 'batch'",
                param="input_file_id",
                code="invalid_file_purpose",
            )
        known = self.registry.model_ids(project)
        batch_id = new_id("batch_")
        now = time.time()
        report = ValidationReport()
        # Parsed and validated before the write transaction (on SQLite a write lock, which the
        # runners' result commits wait for): the valid lines are staged in a temporary file, so
        # the transaction only inserts them, and memory stays flat whatever the file's size.
        with tempfile.SpooledTemporaryFile(max_size=STAGE_IN_MEMORY_BYTES) as staged:
            line_nos: list[int] = []
            for line in parse_batch_input(
                self.files.read(project, input_file_id),
                endpoint=endpoint,
                known_models=known,
                max_lines=self.max_lines,
                report=report,
            ):
                line_nos.append(line.line_no)
                _stage(staged, line)
            staged.seek(0)
            with write_transaction(self.engine) as conn:
                for rows in _staged_rows(staged, batch_id, len(line_nos)):
                    conn.execute(batch_requests.insert(), rows)
                self._insert_batch(
                    conn,
                    batch_id,
                    project,
                    input_file_id=input_file_id,
                    endpoint=endpoint,
                    completion_window=completion_window,
                    model=report.model,
                    priority=priority,
                    metadata=metadata,
                    line_nos=line_nos,
                    now=now,
                )
        return self.get(project, batch_id)

    def _insert_batch(
        self,
        conn: sa.Connection,
        batch_id: str,
        project: str,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        model: str,
        priority: int,
        metadata: dict[str, str],
        line_nos: list[int],
        now: float,
    ) -> None:
        """The batch's row and its shards (its request rows are in already)."""
        conn.execute(
            batches.insert().values(
                id=batch_id,
                project=project,
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window=completion_window,
                model=model,
                status=BatchStatus.IN_PROGRESS,
                priority=priority,
                metadata_json=orjson.dumps(metadata).decode(),
                total=len(line_nos),
                created_at=now,
                expires_at=now + COMPLETION_WINDOWS[completion_window],
            )
        )
        conn.execute(
            shards.insert(),
            [
                {
                    "batch_id": batch_id,
                    "seq": seq,
                    "start_line": line_nos[i],
                    "end_line": line_nos[min(i + self.shard_lines, len(line_nos)) - 1],
                    "model": model,
                    "priority": priority,
                    "batch_created_at": now,
                    "status": ShardStatus.PENDING,
                }
                for seq, i in enumerate(range(0, len(line_nos), self.shard_lines))
            ],
        )

    # -- read ----------------------------------------------------------------------------------

    def _row(self, conn: sa.Connection, project: str | None, batch_id: str) -> sa.Row:
        if project is None:
            row = conn.execute(_BY_ID, {"batch_id": batch_id}).first()
        else:
            params = {"batch_id": batch_id, "project": project}
            row = conn.execute(_BY_ID_IN_PROJECT, params).first()
        if row is None:
            raise NotFound(
                f"no batch with id {batch_id!r}", param="batch_id", code="batch_not_found"
            )
        return row

    def _view(self, conn: sa.Connection, row: sa.Row, sums: sa.Row | None) -> BatchView:
        view = BatchView(
            id=row.id,
            project=row.project,
            input_file_id=row.input_file_id,
            endpoint=row.endpoint,
            completion_window=row.completion_window,
            model=row.model,
            status=row.status,
            priority=row.priority,
            metadata=orjson.loads(row.metadata_json),
            errors=orjson.loads(row.errors_json),
            total=row.total,
            output_file_id=row.output_file_id,
            error_file_id=row.error_file_id,
            times={c: getattr(row, c) for c in _TIME_COLUMNS},
        )
        if sums is not None:
            view.completed = int(sums.completed or 0)
            view.failed = int(sums.failed or 0)
            view.input_tokens = int(sums.input_tokens or 0)
            view.cached_tokens = int(sums.cached_tokens or 0)
            view.output_tokens = int(sums.output_tokens or 0)
        if row.status == BatchStatus.IN_PROGRESS:
            self._estimate(conn, view)
        return view

    def _estimate(self, conn: sa.Connection, view: BatchView) -> None:
        """Queue position and start/finish estimates from the engines' measured request rate."""
        ahead = conn.execute(
            _AHEAD,
            {
                "model": view.model,
                "batch_id": view.id,
                "priority": view.priority,
                "created_at": view.times["created_at"],
            },
        ).one()
        view.queue_position = int(ahead[0])
        now = time.time()
        rate = self.registry.request_rate(view.model)
        if rate > 0:
            remaining = view.total - view.completed - view.failed
            view.estimated_start_at = view.times["in_progress_at"] or now + int(ahead[1]) / rate
            view.estimated_finish_at = max(now, view.estimated_start_at) + remaining / rate

    def get(self, project: str | None, batch_id: str) -> BatchView:
        """One batch with counts and estimates."""
        with self.engine.connect() as conn:
            row = self._row(conn, project, batch_id)
            sums = conn.execute(_SUMS_OF, {"batch_id": batch_id}).first()
            return self._view(conn, row, sums)

    def list_batches(
        self, project: str | None, limit: int = 20, after: str = ""
    ) -> tuple[list[BatchView], bool]:
        """Newest first; returns (page, has_more)."""
        with self.engine.connect() as conn:
            query = sa.select(batches)
            if project is not None:
                query = query.where(batches.c.project == project)
            if after:
                anchor = self._row(conn, project, after)
                query = query.where(
                    sa.or_(
                        batches.c.created_at < anchor.created_at,
                        sa.and_(
                            batches.c.created_at == anchor.created_at, batches.c.id < anchor.id
                        ),
                    )
                )
            rows = conn.execute(
                query.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit + 1)
            ).all()
            page = rows[:limit]
            ids = [r.id for r in page]
            sums = {s.batch_id: s for s in conn.execute(_SUMS.where(shards.c.batch_id.in_(ids)))}
            return [self._view(conn, r, sums.get(r.id)) for r in page], len(rows) > limit

    # -- cancel, expire, finalize ----------------------------------------------------------------

    def cancel(self, project: str | None, batch_id: str) -> BatchView:
        """Moves the batch to `cancelling`; it is finalized once no engine holds a live lease."""
        now = time.time()
        with write_transaction(self.engine) as conn:
            row = self._row(conn, project, batch_id)
            if row.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                pass
            elif row.status != BatchStatus.IN_PROGRESS:
                raise FailedPrecondition(
                    f"batch {batch_id} is {row.status} and cannot be cancelled",
                    param="batch_id",
                    code="batch_not_cancellable",
                )
            else:
                conn.execute(
                    batches.update()
                    .where(batches.c.id == batch_id)
                    .values(status=BatchStatus.CANCELLING, cancelling_at=now)
                )
                conn.execute(
                    shards.update()
                    .where(shards.c.batch_id == batch_id, shards.c.status == ShardStatus.PENDING)
                    .values(status=ShardStatus.STOPPED)
                )
        self.try_finalize(batch_id)
        return self.get(project, batch_id)

    def _live_leases(self, conn: sa.Connection, batch_id: str, now: float) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    shards.c.batch_id == batch_id,
                    shards.c.status == ShardStatus.LEASED,
                    shards.c.lease_expires_at > now,
                )
            ).scalar_one()
        )

    def try_finalize(self, batch_id: str) -> str | None:
        """Finalizes the batch if it is ready to be; returns the final status when it did."""
        now = time.time()
        with write_transaction(self.engine) as conn:
            row = conn.execute(sa.select(batches).where(batches.c.id == batch_id)).first()
            if row is None or row.status in TERMINAL:
                return None
            if row.finalizing_at is not None and row.finalizing_at > now - FINALIZE_RETRY_SECONDS:
                return None  # another process is finalizing it
            if row.status == BatchStatus.CANCELLING:
                if self._live_leases(conn, batch_id, now):
                    return None
                target = BatchStatus.CANCELLED
            elif row.expires_at <= now:
                if self._live_leases(conn, batch_id, now):
                    return None
                target = BatchStatus.EXPIRED
            else:
                unfinished = conn.execute(
                    sa.select(sa.func.count()).where(
                        shards.c.batch_id == batch_id, shards.c.status != ShardStatus.DONE
                    )
                ).scalar_one()
                if unfinished:
                    return None
                target = BatchStatus.COMPLETED
            values: dict[str, object] = {"finalizing_at": now}
            if target == BatchStatus.COMPLETED:
                values["status"] = BatchStatus.FINALIZING
            conn.execute(batches.update().where(batches.c.id == batch_id).values(**values))
            conn.execute(
                shards.update()
                .where(shards.c.batch_id == batch_id, shards.c.status.in_(UNFINISHED))
                .values(status=ShardStatus.STOPPED, lease_owner=None, lease_expires_at=None)
            )
        self._write_outputs(row, target)
        return target

    def _result_lines(self, batch_id: str, ok: bool) -> Iterator[bytes]:
        with self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=1000).execute(
                sa.select(results.c.line_json)
                .where(results.c.batch_id == batch_id, results.c.ok.is_(ok))
                .order_by(results.c.line_no)
            )
            for r in rows:
                yield r.line_json.encode() + b"\n"

    def _expired_lines(self, batch_id: str) -> Iterator[bytes]:
        with self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=1000).execute(
                sa.select(batch_requests.c.custom_id)
                .where(
                    batch_requests.c.batch_id == batch_id,
                    ~sa.exists().where(
                        results.c.batch_id == batch_id,
                        results.c.line_no == batch_requests.c.line_no,
                    ),
                )
                .order_by(batch_requests.c.line_no)
            )
            for r in rows:
                yield (
                    orjson.dumps(
                        {
                            "id": new_id("batch_req_"),
                            "custom_id": r.custom_id,
                            "response": None,
                            "error": {
                                "code": "batch_expired",
                                "message": "This request could not be executed before the "
                                "completion window expired.",
                            },
                        }
                    )
                    + b"\n"
                )

    def _write_outputs(self, row: sa.Row, target: str) -> None:
        output_id = self.files.write_lines(
            row.project,
            f"{row.id}_output.jsonl",
            BATCH_OUTPUT_PURPOSE,
            [self._result_lines(row.id, True)],
        )
        error_parts = [self._result_lines(row.id, False)]
        if target == BatchStatus.EXPIRED:
            error_parts.append(self._expired_lines(row.id))
        error_id = self.files.write_lines(
            row.project, f"{row.id}_errors.jsonl", BATCH_OUTPUT_PURPOSE, error_parts
        )
        now = time.time()
        with write_transaction(self.engine) as conn:
            # Guarded: if a slow finalizer was overtaken by a retry, only the first one lands.
            landed = conn.execute(
                batches.update()
                .where(batches.c.id == row.id, batches.c.status.not_in(TERMINAL))
                .values(
                    status=target,
                    output_file_id=output_id,
                    error_file_id=error_id,
                    **{f"{target}_at": now},
                )
            ).rowcount
            if landed:
                conn.execute(
                    batch_events.insert().values(
                        batch_id=row.id, type=f"batch.{target}", created_at=now
                    )
                )
        if not landed:
            for file_id in (output_id, error_id):
                if file_id:
                    self.files.delete(None, file_id)

    def events(
        self, after: int, limit: int, project: str | None = None
    ) -> list[tuple[int, str, float, BatchView]]:
        """Finished-batch events after a cursor: (sequence, type, time, batch). A project
        (None = admin, every project) reads only its own batches' events: each event carries
        the whole batch, its metadata included."""
        query = sa.select(batch_events).where(batch_events.c.sequence > after)
        if project is not None:
            query = query.where(
                batch_events.c.batch_id.in_(
                    sa.select(batches.c.id).where(batches.c.project == project)
                )
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(batch_events.c.sequence).limit(limit)).all()
            out = []
            for ev in rows:
                row = self._row(conn, None, ev.batch_id)
                sums = conn.execute(_SUMS.where(shards.c.batch_id == ev.batch_id)).first()
                out.append((ev.sequence, ev.type, ev.created_at, self._view(conn, row, sums)))
            return out

    def queue_depth(self) -> dict[str, int]:
        """Lines in unfinished shards, per model (the queue-depth gauge)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    shards.c.model,
                    sa.func.sum(
                        shards.c.end_line
                        - shards.c.start_line
                        + 1
                        - shards.c.completed
                        - shards.c.failed
                    ),
                )
                .where(shards.c.status.in_(UNFINISHED))
                .group_by(shards.c.model)
            ).all()
        return {model: int(lines or 0) for model, lines in rows}

    def maintain(self) -> list[tuple[str, str]]:
        """Finalizes what is due: cancelled or expired batches, stale finalizations.

        Runs periodically on the api role, so a batch never waits on a runner to end.
        """
        now = time.time()
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(batches.c.id).where(
                    sa.or_(
                        batches.c.status == BatchStatus.CANCELLING,
                        sa.and_(
                            batches.c.status == BatchStatus.IN_PROGRESS, batches.c.expires_at <= now
                        ),
                        sa.and_(
                            batches.c.status == BatchStatus.FINALIZING,
                            batches.c.finalizing_at < now - FINALIZE_RETRY_SECONDS,
                        ),
                        sa.and_(
                            batches.c.status == BatchStatus.IN_PROGRESS,
                            ~sa.exists().where(
                                shards.c.batch_id == batches.c.id,
                                shards.c.status != ShardStatus.DONE,
                            ),
                        ),
                    )
                )
            ).all()
        done = []
        for (batch_id,) in due:
            status = self.try_finalize(batch_id)
            if status:
                done.append((batch_id, status))
        return done


def _stage(out: IO[bytes], line: RequestLine) -> None:
    """One valid line, length-prefixed: read back without parsing JSON again."""
    custom_id, body = line.custom_id.encode(), line.body_json.encode()
    out.write(_STAGED.pack(line.line_no, len(custom_id), len(body)))
    out.write(custom_id)
    out.write(body)


def _staged_rows(staged: IO[bytes], batch_id: str, count: int) -> Iterator[list[dict[str, object]]]:
    """The staged lines as request rows, INSERT_CHUNK at a time."""
    rows: list[dict[str, object]] = []
    for _ in range(count):
        line_no, id_len, body_len = _STAGED.unpack(staged.read(_STAGED.size))
        custom_id = staged.read(id_len).decode()
        rows.append(
            {
                "batch_id": batch_id,
                "line_no": line_no,
                "custom_id": custom_id,
                "body_json": staged.read(body_len).decode(),
            }
        )
        if len(rows) >= INSERT_CHUNK:
            yield rows
            rows = []
    if rows:
        yield rows
