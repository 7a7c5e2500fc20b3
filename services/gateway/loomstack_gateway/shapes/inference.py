"""Inference protos ↔ OpenAI JSON: files, batches, models, as the OpenAI REST API returns them
(plus our extensions).

Plain functions building dicts straight from the messages (no generic proto → JSON pass), so
the hot paths stay cheap and every field name is visible here.
"""

from __future__ import annotations

from typing import Any

from loomstack.inference.v1 import batches_pb2, files_pb2, models_pb2
from loomstack_kit.list_page import page

from .common import seconds

_STATUS_PREFIX = "BATCH_STATUS_"
BATCH_STATUS_NAMES: dict[int, str] = {
    value: name.removeprefix(_STATUS_PREFIX).lower()
    for name, value in batches_pb2.BatchStatus.items()
    if value != batches_pb2.BATCH_STATUS_UNSPECIFIED
}
TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})

# OpenAI's batch timestamp name → the proto's field name.
_BATCH_TIMES = (
    ("in_progress_at", "in_progress_time"),
    ("expires_at", "expire_time"),
    ("finalizing_at", "finalizing_time"),
    ("completed_at", "complete_time"),
    ("failed_at", "fail_time"),
    ("expired_at", "expired_time"),
    ("cancelling_at", "cancelling_time"),
    ("cancelled_at", "cancelled_time"),
)


def file_object(f: files_pb2.File) -> dict[str, Any]:
    """OpenAI's `file` object (+ `line_count`)."""
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.create_time.seconds,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "line_count": f.line_count,
    }


def file_list(resp: files_pb2.ListFilesResponse) -> dict[str, Any]:
    """OpenAI's list of files."""
    return page([file_object(f) for f in resp.files], bool(resp.next_page_token))


def file_deleted(resp: files_pb2.DeleteFileResponse) -> dict[str, Any]:
    """OpenAI's file deletion status."""
    return {"id": resp.id, "object": "file", "deleted": resp.deleted}


def batch_object(b: batches_pb2.Batch) -> dict[str, Any]:
    """OpenAI's `batch` object (+ `priority`, `queue_position`, estimated start and finish)."""
    usage = b.usage
    counts = b.request_counts
    doc: dict[str, Any] = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model or None,
        "errors": (
            {
                "object": "list",
                "data": [
                    {
                        "code": e.code,
                        "line": e.line or None,
                        "message": e.message,
                        "param": e.param or None,
                    }
                    for e in b.errors
                ],
            }
            if b.errors
            else None
        ),
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": BATCH_STATUS_NAMES.get(b.status, "validating"),
        "output_file_id": b.output_file_id or None,
        "error_file_id": b.error_file_id or None,
        "created_at": b.create_time.seconds,
    }
    for name, field in _BATCH_TIMES:
        doc[name] = seconds(b, field)
    doc["request_counts"] = {
        "total": counts.total,
        "completed": counts.completed,
        "failed": counts.failed,
    }
    doc["metadata"] = dict(b.metadata)
    doc["usage"] = {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }
    doc["priority"] = b.priority
    doc["queue_position"] = b.queue_position
    doc["estimated_start_at"] = seconds(b, "estimated_start_time")
    doc["estimated_finish_at"] = seconds(b, "estimated_finish_time")
    return doc


def batch_list(resp: batches_pb2.ListBatchesResponse) -> dict[str, Any]:
    """OpenAI's list of batches."""
    return page([batch_object(b) for b in resp.batches], bool(resp.next_page_token))


def model_object(m: models_pb2.Model) -> dict[str, Any]:
    """OpenAI's `model` object (+ `parent`, `max_model_len` and live serving state, as vLLM)."""
    return {
        "id": m.id,
        "object": "model",
        "created": m.create_time.seconds,
        "owned_by": m.owned_by,
        "parent": m.parent or None,
        "max_model_len": m.max_model_len,
        "ready_engines": m.ready_engines,
        "throughput_tokens_per_second": m.throughput_tokens_per_second,
    }


def model_list(resp: models_pb2.ListModelsResponse) -> dict[str, Any]:
    """OpenAI's list of models."""
    return {"object": "list", "data": [model_object(m) for m in resp.models]}


def create_batch_request(
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    priority: int,
) -> batches_pb2.CreateBatchRequest:
    """OpenAI's create-batch body → the proto request."""
    return batches_pb2.CreateBatchRequest(
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        metadata=metadata or {},
        priority=priority,
    )
