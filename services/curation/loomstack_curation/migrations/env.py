"""Alembic environment of the curation service (its own version table)."""

from loomstack_curation.tables import metadata
from loomstack_kit.database import run_alembic_environment

run_alembic_environment(metadata, "alembic_version_curation")
