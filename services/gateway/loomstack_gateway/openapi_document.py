"""The gateway's OpenAPI document: FastAPI's, corrected to say what the gateway really answers.

FastAPI documents a `422` with its own validation body on every route with parameters, and
nothing else. The gateway answers none of that: every refusal is OpenAI's error JSON with the
status of the kit's error table (a bad value is a 400), keys are checked on every path but the
open ones (401), `OpenAI-Project` may name the project to act for (403 when the key may not),
the per-key limits answer 429 with `Retry-After`, JSON bodies over the limit 413, and a service
that is down 503. Each response carries `x-request-id`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .auth import OPEN_PATHS
from .request_ids import REQUEST_ID_HEADER

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error shape.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "line": {"type": "integer", "description": "The input file's line, if any."},
            },
        }
    },
}
_DESCRIPTIONS = {
    400: "Invalid request: a parameter or body field is malformed or out of range.",
    401: "No API key, or an unknown one.",
    403: "The key may not do this (an /admin route with a project key, another project in "
    "`OpenAI-Project`).",
    404: "No such object in the caller's project.",
    413: "The request body is over the limit.",
    429: "Over the key's rate or concurrency limit.",
    503: "A service the route needs is unavailable; retry later.",
}
_REQUEST_ID = {
    "description": "The request's id, also in the logs of every service it reached.",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "string"},
}
# `OpenAI-Project` is a header of every keyed route, as in OpenAI's API (whose document does
# not list it per operation either): it belongs with the key.
_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key. With `OpenAI-Project: <project>` an admin key acts for that "
    "project; a project key may name only its own (another: 403 `invalid_project`).",
}


def _error_statuses(path: str, operation: dict[str, Any]) -> list[int]:
    """The statuses other than 200 that an operation may answer."""
    if path in OPEN_PATHS:
        return [503] if path == "/readyz" else []
    statuses = {401, 403, 429, 503}
    inputs = [p for p in operation.get("parameters", []) if p["in"] in ("path", "query")]
    body = "requestBody" in operation
    if inputs or body:
        statuses.add(400)
    # An id in the path or the body, or a list's `after` cursor, may name nothing.
    if body or any(p["in"] == "path" or p["name"] == "after" for p in inputs):
        statuses.add(404)
    if body:
        statuses.add(413)
    return sorted(statuses)


def _error_response(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {REQUEST_ID_HEADER: _REQUEST_ID}
    if status == 429:
        headers["retry-after"] = _RETRY_AFTER
    return {
        "description": _DESCRIPTIONS[status],
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def build_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, corrected as the module docstring says."""
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {"bearer": _BEARER}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for response in responses.values():
                response.setdefault("headers", {})[REQUEST_ID_HEADER] = _REQUEST_ID
            for status in _error_statuses(path, operation):
                responses[str(status)] = _error_response(status)
            if path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
    return document
