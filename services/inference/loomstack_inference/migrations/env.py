"""Alembic environment of the inference service (its own version table)."""

from loomstack_inference.tables import metadata
from loomstack_kit.database import run_alembic_environment

run_alembic_environment(metadata, "alembic_version_inference")
