"""Fixtures of the plugin tests: the Aris plugin's database migrated on SQLite and PostgreSQL
(tests/conftest.py's `db_url`), its store and a stand-in curation context on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aris_support import CurationContextStandIn

from loomstack_aris.conquests import ConquestStore
from loomstack_aris.plugin import DATABASE
from loomstack_kit.database import create_db_engine, migrate


@pytest.fixture
def aris_url(db_url: str) -> str:
    """The Aristotle database, migrated by the kit as curation migrates a plugin's."""
    migrate(db_url, str(DATABASE.migrations), DATABASE.version_table)
    return db_url


@pytest.fixture
def engine(aris_url: str) -> Iterator[object]:
    engine = create_db_engine(aris_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: object) -> ConquestStore:
    return ConquestStore(engine)  # type: ignore[arg-type]


@pytest.fixture
def host(engine: object, tmp_path: Path) -> CurationContextStandIn:
    return CurationContextStandIn(engine, tmp_path)
