"""The statuses of the batch state machine and of its shard lease queue, one enum each.

They are `StrEnum`s: each member is its own string, so the values stored in the `status` columns,
compared in queries and sent as OpenAI's wire strings stay exactly what they were as literals.
"""

from __future__ import annotations

from enum import StrEnum


class BatchStatus(StrEnum):
    """OpenAI's batch statuses: `validating → in_progress → finalizing → completed`, `failed`,
    `cancelling → cancelled`, `expired`."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def event_type(self) -> str:
        """The type of the event-feed entry written when a batch reaches this status."""
        return f"batch.{self.value}"


# A batch in one of these never changes again.
TERMINAL = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
# A cancel request is accepted in these; later it is refused.
CANCELLABLE = frozenset({BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS})


class ShardStatus(StrEnum):
    """A shard waits (`pending`), runs under a lease (`leased`), then is `done`, or is `stopped`
    because its batch was cancelled, expired or finalized without it."""

    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    STOPPED = "stopped"


# Shards whose lines still wait or run: the queue.
QUEUED = (ShardStatus.PENDING, ShardStatus.LEASED)
