"""Alembic environment of the training service (its own version table)."""

from loomstack_kit.database import run_alembic_environment
from loomstack_training.tables import metadata

run_alembic_environment(metadata, "alembic_version_training")
