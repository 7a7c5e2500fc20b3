"""Alembic environment of the Aris plugin's Aristotle database (its own version table)."""

from loomstack_aris.tables import metadata
from loomstack_kit.database import run_alembic_environment

run_alembic_environment(metadata, "alembic_version_aris")
