"""The JSON response class of every route: orjson, no validation pass over the returned dict."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """`application/json` rendered by orjson (a JSONResponse, so that FastAPI documents the
    routes' answers as JSON rather than as a string)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
