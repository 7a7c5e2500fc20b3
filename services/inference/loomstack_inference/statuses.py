"""The states a batch and its shards move through, as the database stores them.

A batch is created `in_progress` (its input is validated whole while the request is answered:
a bad file is refused with a 400 naming the line, so a batch is never `validating`, and no
stored batch is ever `failed`: a line that fails is counted and written to the error file).
It becomes `finalizing` once every shard is done, then `completed`; `cancelling` when cancelled
with shards in flight, then `cancelled`; `expired` when its completion window ends first.

A shard is `pending` (claimable), `leased` by one engine (until its lease expires), `done`, or
`stopped` when its batch was cancelled or expired first.
"""

from __future__ import annotations

from enum import StrEnum


class BatchStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# A batch in one of these never changes again.
TERMINAL = (BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class ShardStatus(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    STOPPED = "stopped"  # its batch was cancelled or expired before it ran


# Shards an engine may still be working on, or will.
UNFINISHED = (ShardStatus.PENDING, ShardStatus.LEASED)
