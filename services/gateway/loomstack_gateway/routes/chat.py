"""`/v1/chat/completions`: online chat, unary or as server-sent events.

The body is passed through untouched as bytes (the proto carries OpenAI's JSON), so every
sampling parameter reaches vLLM's serving layer; the gateway only reads `stream`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from loomstack.inference.v1 import chat_pb2
from loomstack_kit.errors import InvalidArgument, openai_error_body

from ..auth import caller_of
from ..direct_routes import direct
from ..http_errors import upstream_error
from ..settings import GatewaySettings
from ..upstream import Inference, prefetched

_DONE = b"data: [DONE]\n\n"
_CHAT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "messages"],
                    "properties": {
                        "model": {"type": "string"},
                        "messages": {"type": "array", "items": {"type": "object"}},
                        "stream": {"type": "boolean"},
                    },
                    "additionalProperties": True,
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "The completion, or with `stream` its chunks as server-sent events.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    },
}


def _parse(raw: bytes) -> dict[str, object]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(
            f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(doc, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return doc


def chat_router(inference: Inference, settings: GatewaySettings) -> APIRouter:
    """The chat route, bound to the inference service's client."""
    router = APIRouter(prefix="/v1/chat", tags=["chat"])

    @router.post("/completions", summary="Create a chat completion", openapi_extra=_CHAT_DOC)
    @direct
    async def create_chat_completion(request: Request) -> Response:
        raw = await request.body()
        metadata = caller_of(request).metadata
        if not _parse(raw).get("stream"):
            resp = await inference.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(request_json=raw),
                metadata=metadata,
                timeout=settings.upstream_timeout_seconds,
            )
            return Response(resp.response_json, media_type="application/json")

        call = inference.chat.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(request_json=raw), metadata=metadata
        )
        # Errors before the first token get their HTTP status; later ones can only be
        # reported inside the stream.
        messages = await prefetched(call)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for msg in messages:
                    yield b"data: " + msg.chunk_json + b"\n\n"
            except grpc.aio.AioRpcError as exc:
                error = upstream_error(exc, request.scope)
                yield b"data: " + orjson.dumps(openai_error_body(error)) + b"\n\n"
            yield _DONE

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return router
