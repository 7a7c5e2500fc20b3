"""Alembic environment of the training service (its own version table)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from loomstack_training.tables import metadata

config = context.config
version_table = config.attributes.get("version_table", "alembic_version_training")


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if (shared := config.attributes.get("connection")) is not None:
    _run(shared)
else:
    with create_engine(
        config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool
    ).connect() as conn:
        _run(conn)
