"""The smallest Loomstack plugin: one contribution of each common kind, each a few lines.

Curation takes the schema, the rating scale, the parser, the exporter and the result handler;
the gateway serves the route at `/v1/plugins/hello/greeting`. It imports only the kit (and
FastAPI for the route), as every plugin must.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from loomstack_kit.plugins import (
    CurationContext,
    Exporter,
    ExportRequest,
    FeedEvent,
    Plugin,
    ResultHandler,
    RouteContext,
    Routes,
)

EVENTS_LOG = "hello-events.log"


def upper(text: str) -> dict[str, Any]:
    """The model's answer, shouted, as the `corrected` answer."""
    return {"corrected": text.upper()}


def upper_chat(request: ExportRequest, context: CurationContext) -> Iterator[list[dict[str, str]]]:
    """One chat example from the request alone (it ignores the project's tasks)."""
    greeting = request.options.get("greeting", "hello")
    yield [
        {"role": "user", "content": f"Greet the {request.project} project."},
        {"role": "assistant", "content": greeting.upper()},
    ]


def record_batch(event: FeedEvent, context: CurationContext) -> None:
    """Appends the batch id to `<home>/hello-events.log` once: a replayed event finds its line.

    A batch whose metadata says `hello_fail: "true"` makes it raise while the file
    `<home>/hello-fail` exists: how the tests show retries and the dead-letter list.
    """
    path = Path(context.home) / EVENTS_LOG
    batch_id = str(event.data["batch_id"])
    asked = event.data.get("metadata", {}).get("hello_fail") == "true"
    if asked and (Path(context.home) / "hello-fail").exists():
        raise RuntimeError(f"asked to fail on {batch_id}")
    seen = path.read_text().splitlines() if path.exists() else []
    if batch_id in seen:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(batch_id + "\n")


def greeting_routes(context: RouteContext) -> APIRouter:
    """`GET /greeting` under the plugin's prefix."""
    router = APIRouter()

    @router.get("/greeting")
    async def greeting() -> dict[str, str]:
        return {"object": "hello.greeting", "message": "hello"}

    return router


plugin = Plugin(
    name="hello",
    version="0.1.0",
    description="Example plugin: a greeting schema, a mood scale, a parser, an exporter, "
    "a batch log and a greeting route.",
    schemas=Path(__file__).parent / "schemas",
    ratings={"hello.mood": ("Great", "Fine", "Poor")},
    parsers={"hello.upper": upper},
    exporters=(
        Exporter(
            name="hello.upper_chat",
            export=upper_chat,
            description="One chat example whose answer is the greeting in capitals.",
            options=("greeting",),
        ),
    ),
    result_handlers=(
        ResultHandler(
            name="record_batch",
            handle=record_batch,
            feed="batches",
            events=("batch.completed",),
        ),
    ),
    routes=Routes(build=greeting_routes),
)
