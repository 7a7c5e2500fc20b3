"""Fixtures shared by every test: databases on SQLite and PostgreSQL, domain objects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from labelstudio_fixtures import (  # noqa: F401 — fixtures and hooks of the whole session
    label_studio,
    label_studio_server,
    pytest_terminal_summary,
    register_marker,
)
from support import MODEL_NAME, MODEL_PATH, postgres_database

from loomstack_inference.__main__ import MIGRATIONS
from loomstack_inference.batches import Batches
from loomstack_inference.files import FileStore
from loomstack_inference.registry import Registry
from loomstack_kit.blobstore import FilesystemBlobStore
from loomstack_kit.database import create_db_engine, migrate


def pytest_configure(config: pytest.Config) -> None:
    register_marker(config)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One fresh PostgreSQL database for the session."""
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every domain test runs on the embedded SQLite and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'inference.db'}"
    else:
        with postgres_database() as url:
            yield url


@dataclass
class Domain:
    """The inference service's domain objects on one database."""

    url: str
    engine: object
    files: FileStore
    batches: Batches
    registry: Registry


@pytest.fixture
def domain(db_url: str, tmp_path: Path) -> Iterator[Domain]:
    """Migrated database + file store + batches, with the default model registered."""
    migrate(db_url, MIGRATIONS, "alembic_version_inference")
    engine = create_db_engine(db_url)
    files = FileStore(engine, FilesystemBlobStore(tmp_path / "blobs"), max_bytes=10 * 1024 * 1024)
    batches = Batches(engine, files, shard_lines=4, max_lines=100)
    registry = Registry(engine)
    registry.register_model(MODEL_NAME, MODEL_PATH, 2048)
    yield Domain(db_url, engine, files, batches, registry)
    engine.dispose()


@pytest.fixture(scope="session")
def inference_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real inference service, api role only (files, batches, the event feed; no engine),
    shared by the curation and plugin tests."""
    from support import api_only_inference

    with api_only_inference(tmp_path_factory.mktemp("inference-api")) as process:
        yield process
