"""The plugin's result handlers, in priority order; each is idempotent (delivery is
at-least-once) and raises on a transient failure (database or a service down) so the host
retries it.

Batches of the project carry a conquest in their metadata: `conquest_id` and `conquest_type`.
A batch without `conquest_id` is not Aris's and is ignored. Metadata that names an unknown
conquest (or one of another project) or the wrong type is never an exception: a batch and
curation's own import must not suffer from it. parse_conquest records the problem (on the
conquest when there is one, else in the log); the later handlers skip such a batch.

1. parse_conquest   (batches, created/completed, 10): the conquest's batch; ANALYZING.
2. import_results   (batches, completed, 20): into Label Studio with the type's schema, unless
   the batch names a `schema_type` itself (curation's import queued it already).
3. record_analysis  (batches, completed, 30): prompts and answers; COMPLETED or FAILED.
   end_conquest     (batches, cancelled/expired, 30): CANCELLED, or FAILED for an expired one.
4. gold_to_victory  (curation, gold set/removed, 10): VICTORY and the rating row. It never
   calls set_gold: that is how the two directions of the gold-star sync cannot loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from loomstack_kit.plugins import GOLD_REMOVED, GOLD_SET, CurationContext, FeedEvent, ResultHandler

from .conquests import Conquest, ConquestStore
from .terms import ConquestStatus, ConquestType

log = logging.getLogger(__name__)

CONQUEST_ID_KEY = "conquest_id"
CONQUEST_TYPE_KEY = "conquest_type"
SCHEMA_TYPE_KEY = "schema_type"
BATCH_CREATED = "batch.created"
BATCH_COMPLETED = "batch.completed"
BATCH_CANCELLED = "batch.cancelled"
BATCH_EXPIRED = "batch.expired"


@dataclass(frozen=True)
class BatchConquest:
    """What a batch event's metadata says about its conquest."""

    conquest: Conquest | None
    problem: str = ""

    @property
    def usable(self) -> bool:
        """The conquest exists and the metadata agrees with it."""
        return self.conquest is not None and not self.problem


def _metadata(event: FeedEvent) -> Mapping[str, Any]:
    metadata = event.data.get("metadata") or {}
    return metadata if isinstance(metadata, Mapping) else {}


def conquest_of(event: FeedEvent, store: ConquestStore) -> BatchConquest | None:
    """The batch's conquest and what is wrong with its metadata; None for a batch that names
    no conquest (not Aris's)."""
    metadata = _metadata(event)
    raw_id = str(metadata.get(CONQUEST_ID_KEY) or "").strip()
    if not raw_id:
        return None
    batch_id = str(event.data.get("batch_id", ""))
    conquest = store.find(event.project, raw_id)
    if conquest is None:
        return BatchConquest(
            None, f"batch {batch_id} names conquest {raw_id!r}, which the project does not have"
        )
    raw_type = str(metadata.get(CONQUEST_TYPE_KEY) or "").strip()
    if raw_type and raw_type.upper() != conquest.type.value:
        valid = ", ".join(t.value for t in ConquestType)
        known = raw_type.upper() in {t.value for t in ConquestType}
        reason = "" if known else f", not a conquest type (valid: {valid})"
        return BatchConquest(
            conquest,
            f"batch {batch_id} metadata.conquest_type {raw_type!r}{reason} does not match the "
            f"conquest's type {conquest.type.value}",
        )
    return BatchConquest(conquest)


def parse_conquest(event: FeedEvent, context: CurationContext) -> None:
    """Links the conquest to its batch (ANALYZING once the batch is created), or records what
    is wrong with the metadata."""
    store = ConquestStore(context.database)
    found = conquest_of(event, store)
    if found is None:
        return
    batch_id = str(event.data.get("batch_id", ""))
    if found.problem:
        if found.conquest is not None:
            store.record_problem(event.project, found.conquest.id, found.problem)
        log.warning(
            "batch metadata names no usable conquest",
            extra={"batch_id": batch_id, "project": event.project, "problem": found.problem},
        )
        return
    assert found.conquest is not None
    store.attach_batch(
        event.project, found.conquest.id, batch_id, started=event.type == BATCH_CREATED
    )


def import_results(event: FeedEvent, context: CurationContext) -> None:
    """Queues the batch's results for Label Studio with the conquest type's schema (once:
    curation's queue refuses a second time), unless the batch chose a `schema_type`."""
    found = conquest_of(event, ConquestStore(context.database))
    if found is None or not found.usable or found.conquest is None:
        return
    if str(_metadata(event).get(SCHEMA_TYPE_KEY) or "").strip():
        return
    if not event.data.get("output_file_id"):
        return
    context.queue_import(event, found.conquest.type.schema_id)


def _content(output: Mapping[str, Any]) -> str | None:
    response = output.get("response") or {}
    if not isinstance(response, Mapping) or output.get("error"):
        return None
    if int(response.get("status_code") or 200) >= 400:
        return None
    try:
        content = response["body"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _error(output: Mapping[str, Any]) -> str:
    error = output.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error.get("code") or "failed")
    return str(error) if error else "no answer"


def _lines(context: CurationContext, project: str, file_id: Any) -> Iterator[Mapping[str, Any]]:
    if file_id:
        yield from context.file_lines(project, str(file_id))


def record_analysis(event: FeedEvent, context: CurationContext) -> None:
    """Stores the batch's prompts and answers on its conquest: COMPLETED, or FAILED when no
    request of the batch succeeded."""
    store = ConquestStore(context.database)
    found = conquest_of(event, store)
    if found is None or not found.usable or found.conquest is None:
        return
    prompts = []
    for line in _lines(context, event.project, event.data.get("input_file_id")):
        body = line.get("body") or {}
        messages = body.get("messages") if isinstance(body, Mapping) else None
        prompts.append(
            {"custom_id": str(line.get("custom_id", "")), "messages": list(messages or [])}
        )
    responses = []
    for line in _lines(context, event.project, event.data.get("output_file_id")):
        content = _content(line)
        responses.append(
            {
                "custom_id": str(line.get("custom_id", "")),
                "content": content,
                "error": None if content is not None else _error(line),
            }
        )
    succeeded = sum(1 for r in responses if r["content"] is not None)
    failures = len(responses) - succeeded + int(event.data.get("failed_lines") or 0)
    store.record_analysis(
        event.project,
        found.conquest.id,
        str(event.data.get("batch_id", "")),
        prompts,
        responses,
        failed=succeeded == 0 and failures > 0,
    )


def end_conquest(event: FeedEvent, context: CurationContext) -> None:
    """The conquest's batch was cancelled (CANCELLED) or expired (FAILED)."""
    store = ConquestStore(context.database)
    found = conquest_of(event, store)
    if found is None or not found.usable or found.conquest is None:
        return
    batch_id = str(event.data.get("batch_id", ""))
    if event.type == BATCH_CANCELLED:
        status, problem = ConquestStatus.CANCELLED, f"batch {batch_id} was cancelled"
    else:
        status, problem = ConquestStatus.FAILED, f"batch {batch_id} expired before it finished"
    store.end_early(event.project, found.conquest.id, batch_id, status, problem)


def gold_to_victory(event: FeedEvent, context: CurationContext) -> None:
    """A gold star in Label Studio: the batch's conquest becomes a VICTORY and the task's
    rating row is starred; a star taken away unstars the row (the verdict stays)."""
    batch_id = str(event.data.get("batch_id") or "")
    ls_task_id = int(event.data.get("ls_task_id") or 0)
    if not batch_id or ls_task_id <= 0:
        return
    annotation = event.data.get("ls_annotation_id")
    ConquestStore(context.database).record_gold(
        event.project,
        batch_id,
        ls_task_id,
        int(annotation) if annotation else None,
        gold=event.type == GOLD_SET,
        origin=str(event.data.get("origin") or ""),
        at=event.created_at,
    )


RESULT_HANDLERS = (
    ResultHandler(
        name="parse_conquest",
        handle=parse_conquest,
        feed="batches",
        priority=10,
        events=(BATCH_CREATED, BATCH_COMPLETED, BATCH_CANCELLED, BATCH_EXPIRED),
    ),
    ResultHandler(
        name="import_results",
        handle=import_results,
        feed="batches",
        priority=20,
        events=(BATCH_COMPLETED,),
    ),
    ResultHandler(
        name="record_analysis",
        handle=record_analysis,
        feed="batches",
        priority=30,
        events=(BATCH_COMPLETED,),
    ),
    ResultHandler(
        name="end_conquest",
        handle=end_conquest,
        feed="batches",
        priority=30,
        events=(BATCH_CANCELLED, BATCH_EXPIRED),
    ),
    ResultHandler(
        name="gold_to_victory",
        handle=gold_to_victory,
        feed="curation",
        priority=10,
        events=(GOLD_SET, GOLD_REMOVED),
    ),
)
