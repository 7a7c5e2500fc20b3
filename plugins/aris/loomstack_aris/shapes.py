"""The conquest API's JSON objects, OpenAI style: an `object` type, unix-second timestamps,
enum values by their short name (`CANDIDATE`, `VICTORY`), and OpenAI's cursor list page."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.message import Message

from .proto_enums import RESULT_OF, STATUS_OF, TYPE_OF, name


def _seconds(msg: Message, field: str) -> int | None:
    if not msg.HasField(field):
        return None
    value: int = getattr(msg, field).seconds
    return value


def _json(text: str) -> Any:
    return json.loads(text) if text else []


def conquest_object(c: Any) -> dict[str, Any]:
    """`aris.conquest`."""
    return {
        "id": c.id,
        "object": "aris.conquest",
        "project": c.project,
        "type": name(c.type, TYPE_OF),
        "title": c.title,
        "description": c.description,
        "status": name(c.status, STATUS_OF),
        "result": name(c.result, RESULT_OF),
        "result_notes": c.result_notes,
        "use_as_example": c.use_as_example,
        "evaluated_by": c.evaluated_by or None,
        "evaluated_at": _seconds(c, "evaluate_time"),
        "created_at": _seconds(c, "create_time"),
        "updated_at": _seconds(c, "update_time"),
        "started_at": _seconds(c, "start_time"),
        "completed_at": _seconds(c, "complete_time"),
        "philosopher": c.philosopher,
        "domain": c.domain,
        "prompt": _json(c.prompt_json),
        "response": _json(c.response_json),
        "batch_id": c.batch_id or None,
        "gold_sync_pending": c.gold_sync_pending,
        "problem": c.problem or None,
    }


def rating_object(r: Any) -> dict[str, Any]:
    """`aris.rating`."""
    return {
        "id": r.id,
        "object": "aris.rating",
        "conquest_id": r.conquest_id,
        "analysis_type": r.analysis_type,
        "rating": r.rating if r.HasField("rating") else None,
        "feedback": r.feedback,
        "is_gold_star": r.is_gold_star,
        "use_as_sample_response": r.use_as_sample_response,
        "include_in_training": r.include_in_training,
        "philosopher": r.philosopher,
        "domain": r.domain,
        "ls_task_id": r.ls_task_id or None,
        "ls_annotation_id": r.ls_annotation_id or None,
        "created_at": _seconds(r, "create_time"),
        "updated_at": _seconds(r, "update_time"),
    }


def icl_example_object(e: Any, fmt: str) -> dict[str, Any]:
    """`aris.icl_example`: `messages` or `text`, as asked."""
    body: dict[str, Any] = {
        "object": "aris.icl_example",
        "conquest_id": e.conquest_id,
        "conquest_type": name(e.type, TYPE_OF),
        "philosopher": e.philosopher,
        "domain": e.domain,
    }
    if fmt == "text":
        body["text"] = e.text
    else:
        body["messages"] = [{"role": m.role, "content": m.content} for m in e.messages]
    return body


def victory_sync_object(s: Any) -> dict[str, Any]:
    """`aris.victory_sync`: what one pass over the pending syncs did."""
    return {
        "object": "aris.victory_sync",
        "synced": s.synced,
        "waiting": s.waiting,
        "failed": s.failed,
    }


def health_object(h: Any) -> dict[str, Any]:
    """`aris.health`."""
    return {
        "object": "aris.health",
        "database_reachable": h.database_reachable,
        "conquests": h.conquests,
        "victories": h.victories,
        "pending_gold_syncs": h.pending_gold_syncs,
        "ratings": h.ratings,
    }
