"""ONE real Label Studio server for the whole test session, shared by every test directory
(the curation tests and the end-to-end test through the vLLM engine): tests/conftest.py
imports these fixtures, so there is exactly one server however the tests are selected.

The server runs from its own virtual environment (`make labelstudio-install`, which `make test`
runs first). Tests that need it are skipped only when that environment does not exist; a server
that is installed but fails to start is an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from label_studio_sdk.client import LabelStudio

from loomstack_curation.labelstudio_server import (
    LabelStudioNotInstalled,
    LabelStudioServer,
    executable_in,
    free_port,
)

REPO = Path(__file__).resolve().parents[1]
_started: dict[str, float] = {}


@dataclass(frozen=True)
class RunningLabelStudio:
    """A Label Studio someone else started: what the tests need of a LabelStudioServer."""

    url: str
    token: str


def register_marker(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "labelstudio: needs the real Label Studio server")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "seconds" in _started:
        terminalreporter.write_line(
            f"Label Studio: healthy {_started['seconds']:.1f} s after start", bold=True
        )


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio on a free loopback port with a fresh data dir, for the session.

    With LOOMSTACK_TEST_LABEL_STUDIO_URL and _TOKEN set, a Label Studio that is running already
    (`make labelstudio`) is used instead: the same server, without a minute of start-up.
    """
    url = os.environ.get("LOOMSTACK_TEST_LABEL_STUDIO_URL")
    if url:
        yield cast(
            LabelStudioServer,
            RunningLabelStudio(url.rstrip("/"), os.environ["LOOMSTACK_TEST_LABEL_STUDIO_TOKEN"]),
        )
        return
    venv = Path(os.environ.get("LOOMSTACK_LABEL_STUDIO_VENV", REPO / ".cache/labelstudio-venv"))
    try:
        executable = executable_in(venv)
    except LabelStudioNotInstalled as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("labelstudio")
    server = LabelStudioServer(
        executable=executable,
        data_dir=root / "data",
        port=free_port(),
        log_path=root / "server.log",
    )
    started = time.monotonic()
    server.start(timeout=600)
    _started["seconds"] = time.monotonic() - started
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio(label_studio_server: LabelStudioServer) -> LabelStudio:
    """The SDK client, authenticated with the server's legacy API token."""
    return LabelStudio(base_url=label_studio_server.url, api_key=label_studio_server.token)
