"""VICTORY → gold star: a verdict set in Aristotle reaches the batch's Label Studio tasks.

`set_result(VICTORY)` stores the verdict with `gold_sync_pending` in one transaction, then asks
curation to star the batch's tasks and clears the flag once it did. When it cannot (Label
Studio down, the import not run yet) the flag stays, and `reconcile` — a loop curation runs —
retries every pending sync. The gold_set event curation then publishes (origin `plugin:aris`)
comes back to `gold_to_victory`, which only records the rating row: nothing on that side ever
calls `set_gold`, so the two directions cannot loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from loomstack_kit.plugins import CurationContext

from .conquests import Conquest, ConquestStore
from .terms import ConquestResult

log = logging.getLogger(__name__)

RECONCILE_SETTING = "LOOMSTACK_ARIS_RECONCILE_SECONDS"
DEFAULT_RECONCILE_SECONDS = 30.0


@dataclass(frozen=True)
class SyncCounts:
    """One pass over the pending syncs: starred now, still waiting (no tasks yet), failed."""

    synced: int = 0
    waiting: int = 0
    failed: int = 0

    @property
    def pending(self) -> int:
        """What is still pending after the pass."""
        return self.waiting + self.failed


class VictorySync:
    """Sets verdicts and carries VICTORY to Label Studio through the curation context."""

    def __init__(self, store: ConquestStore, context: CurationContext) -> None:
        self.store = store
        self.context = context

    def set_result(
        self,
        project: str | None,
        conquest_id: str,
        result: str,
        *,
        notes: str = "",
        evaluated_by: str = "",
        use_as_example: bool | None = None,
    ) -> Conquest:
        """Stores the verdict; a VICTORY is starred in Label Studio now if it can be."""
        conquest = self.store.set_result(
            project,
            conquest_id,
            result,
            notes=notes,
            evaluated_by=evaluated_by,
            use_as_example=use_as_example,
        )
        if conquest.result is ConquestResult.VICTORY:
            self._try(conquest)
            conquest = self.store.get(None, conquest.id)
        return conquest

    def sync_pending(self, project: str | None) -> SyncCounts:
        """Retries every pending sync of the project (None: every project)."""
        synced = waiting = failed = 0
        for conquest in self.store.pending_gold_syncs(project):
            outcome = self._try(conquest)
            if outcome is True:
                synced += 1
            elif outcome is None:
                waiting += 1
            else:
                failed += 1
        return SyncCounts(synced, waiting, failed)

    def _try(self, conquest: Conquest) -> bool | None:
        """True: starred (flag cleared); None: the batch has no tasks yet; False: failed."""
        if not conquest.batch_id:
            return None
        try:
            tasks = self.context.tasks_of_batch(conquest.project, conquest.batch_id)
            if not tasks:
                return None
            unstarred = [t.ls_task_id for t in tasks if not t.gold]
            if unstarred:
                self.context.set_gold(conquest.project, unstarred, True)
        except Exception as exc:  # whatever the host's call raises, the flag stays for a retry
            log.warning(
                "victory not carried to Label Studio yet",
                extra={"conquest_id": conquest.id, "error": f"{type(exc).__name__}: {exc}"},
            )
            return False
        self.store.clear_gold_sync(conquest.id)
        return True


def reconcile_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The reconcile interval (`LOOMSTACK_ARIS_RECONCILE_SECONDS`, default 30)."""
    raw = environ.get(RECONCILE_SETTING, "").strip()
    if not raw:
        return DEFAULT_RECONCILE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{RECONCILE_SETTING} must be a positive number of seconds, not {raw!r}")
    return seconds


async def reconcile(sync: VictorySync, interval: float) -> None:
    """Retries the pending victory syncs every `interval` seconds, until cancelled."""
    while True:
        try:
            counts = await asyncio.to_thread(sync.sync_pending, None)
            if counts.synced or counts.failed:
                log.info(
                    "victory syncs retried",
                    extra={"synced": counts.synced, "failed": counts.failed},
                )
        except Exception:  # the database may be down for a while: the next pass retries
            log.exception("victory reconcile pass failed")
        await asyncio.sleep(interval)
