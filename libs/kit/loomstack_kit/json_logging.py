"""Structured logging: one JSON object per line, with the trace id when a span is active."""

from __future__ import annotations

import logging
import sys
import time

import orjson
from opentelemetry import trace


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (time, level, logger, message, trace, extras)."""

    # Standard record attributes, and uvicorn's ANSI-coloured copy of the message.
    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "color_message",
    }

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            doc["trace_id"] = format(ctx.trace_id, "032x")
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(service: str, level: str = "INFO", json_lines: bool = True) -> None:
    """Sends every logger to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
