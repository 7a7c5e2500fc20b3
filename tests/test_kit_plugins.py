"""The kit's plugin loader over the real installed entry points: the example plugins
`examples/plugins/hello` (every common contribution) and `examples/plugins/broken` (raises at
import), both installed by `make install`."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from loomstack_kit.plugins import (
    Exporter,
    ExportRequest,
    FeedEvent,
    Plugin,
    PluginError,
    PluginStatus,
    ResultHandler,
    installed,
    load_plugins,
)


def status(statuses: list[PluginStatus], name: str) -> PluginStatus:
    return next(s for s in statuses if s.name == name)


def test_the_example_plugins_are_installed() -> None:
    assert {"hello", "broken"} <= set(installed())


def test_hello_loads_with_its_contributions_by_type() -> None:
    plugins = load_plugins(["hello"])
    hello = plugins.get("hello")
    assert hello is not None and [p.name for p in plugins] == ["hello"]
    loaded = status(plugins.statuses, "hello")
    assert loaded.state == "loaded" and loaded.version == "0.1.0" and not loaded.reason
    assert loaded.contributions == {
        "schemas": ["hello.greeting"],
        "ratings": ["hello.mood"],
        "parsers": ["hello.upper"],
        "exporters": ["hello.upper_chat"],
        "result_handlers": ["record_batch"],
        "routes": ["/v1/plugins/hello"],
    }
    assert hello.ratings["hello.mood"] == ("Great", "Fine", "Poor")
    assert hello.parsers["hello.upper"]("hi there") == {"corrected": "HI THERE"}


def test_a_plugin_that_raises_on_import_is_failed_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="loomstack_kit.plugins"):
        plugins = load_plugins(["hello", "broken"])
    assert [p.name for p in plugins] == ["hello"]
    broken = status(plugins.statuses, "broken")
    assert broken.state == "failed" and not broken.contributions
    assert "RuntimeError" in broken.reason and "broken on purpose" in broken.reason
    logged = [r for r in caplog.records if getattr(r, "plugin", None) == "broken"]
    assert logged and "broken on purpose" in getattr(logged[0], "reason", "")


def test_an_enabled_plugin_that_is_not_installed_is_failed() -> None:
    plugins = load_plugins(["nowhere"])
    missing = status(plugins.statuses, "nowhere")
    assert missing.state == "failed" and "not installed" in missing.reason
    assert "hello" in missing.reason, "the reason lists the installed plugins"
    assert not plugins.loaded


def test_a_required_plugin_that_fails_stops_the_service() -> None:
    with pytest.raises(PluginError, match=r"'broken'.*RuntimeError: broken on purpose"):
        load_plugins(["hello", "broken"], required=["broken"])
    with pytest.raises(PluginError, match=r"'nowhere'.*not installed"):
        load_plugins(["nowhere"], required=["nowhere"])
    with pytest.raises(PluginError, match=r"\['hello'\] are not enabled"):
        load_plugins([], required=["hello"])
    plugins = load_plugins(["hello"], required=["hello"])
    assert status(plugins.statuses, "hello").required


def test_installed_plugins_not_enabled_are_disabled() -> None:
    plugins = load_plugins([" ", ""])
    assert not plugins.loaded
    assert status(plugins.statuses, "hello").state == "disabled"
    assert status(plugins.statuses, "broken").state == "disabled"
    plugins = load_plugins(["hello"])
    assert status(plugins.statuses, "broken").state == "disabled"


def chat(request: ExportRequest, context: Any) -> list[list[dict[str, str]]]:
    return []


def nothing(event: FeedEvent, context: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("plugin", "named"),
    [
        (Plugin(name="Hello"), "plugin name 'Hello'"),
        (Plugin(name="hello", ratings={"mood": ["Good"]}), "rating 'mood' must be named hello."),
        (Plugin(name="hello", parsers={"other.upper": str.upper}), "parser 'other.upper'"),
        (Plugin(name="hello", parsers={"hello.": str.upper}), "parser 'hello.'"),
        (Plugin(name="hello", exporters=[Exporter("chat", chat)]), "exporter 'chat'"),
        (
            Plugin(name="hello", result_handlers=[ResultHandler("a", nothing)] * 2),
            "result handler names must be unique",
        ),
        (Plugin(name="hello", schemas=Path("/nonexistent")), "schemas directory /nonexistent"),
    ],
)
def test_contributions_that_break_the_naming_rules_are_refused(plugin: Plugin, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        plugin.check()


def test_the_hello_route_exporter_and_handler(tmp_path: Path) -> None:
    """The example's contributions do what the README says: the route answers under the
    plugin's prefix; the exporter is deterministic; the handler writes each batch id once."""
    hello = load_plugins(["hello"]).get("hello")
    assert hello is not None and hello.routes is not None
    app = FastAPI()
    route_context = SimpleNamespace(plugin="hello", timeout=1.0)
    app.include_router(hello.routes.build(route_context), prefix=hello.route_prefix)
    answer = TestClient(app).get("/v1/plugins/hello/greeting")
    assert answer.status_code == 200
    assert answer.json() == {"object": "hello.greeting", "message": "hello"}

    request = ExportRequest("p", "hello.greeting", False, 0, {"greeting": "hi"})
    (exporter,) = hello.exporters
    examples = list(exporter.export(request, SimpleNamespace()))
    assert examples == list(exporter.export(request, SimpleNamespace()))
    assert examples[0][-1] == {"role": "assistant", "content": "HI"}

    # A stand-in for curation's context: the handler touches only `home`.
    context = SimpleNamespace(plugin="hello", home=tmp_path)
    (handler,) = hello.result_handlers
    assert handler.feed == "batches" and handler.events == ("batch.completed",)
    for batch_id in ("batch_1", "batch_2", "batch_1"):
        event = FeedEvent("batches", 1, "batch.completed", "p", {"batch_id": batch_id})
        handler.handle(event, context)
    assert (tmp_path / "hello-events.log").read_text() == "batch_1\nbatch_2\n"
