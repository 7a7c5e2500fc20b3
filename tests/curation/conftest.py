"""Curation fixtures: the shipped schemas and a real inference service (api role). The one
Label Studio server of the session comes from tests/labelstudio_fixtures.py (via
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loomstack_curation.inference_client import InferenceClient
from loomstack_curation.registry import TaskRegistry
from loomstack_kit.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"


@pytest.fixture(scope="session")
def schemas_dir() -> Path:
    """The repository's `schemas/` directory."""
    return SCHEMAS


@pytest.fixture(scope="session")
def registry() -> TaskRegistry:
    """The schemas shipped in `schemas/`."""
    return TaskRegistry.load(SCHEMAS)


@pytest.fixture
def inference(inference_api: Any) -> Iterator[InferenceClient]:
    """The curation service's own client of that inference service, signing with the session's
    service secret (tests/support.py puts it in the environment)."""
    client = InferenceClient(inference_api.address, ServiceSettings())
    yield client
    client.close()
