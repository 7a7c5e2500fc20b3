"""Generated object ids (never derived from user input)."""

from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    """`<prefix><32 hex>`, e.g. `file-…`, `batch_…`."""
    return f"{prefix}{uuid.uuid4().hex}"
