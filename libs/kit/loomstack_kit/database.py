"""Database helpers: engines for SQLite (embedded default) and PostgreSQL, sessions, migrations.

Services use SQLAlchemy 2 Core/ORM synchronously and call it from the event loop through
`asyncio.to_thread`; each service owns its tables and its own Alembic version table, so
several services can share one database without touching each other's tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(engine: Engine) -> bool:
    """True for the embedded SQLite backend."""
    return engine.dialect.name == "sqlite"


def normalize_url(url: str) -> str:
    """Accepts `postgresql://` URLs and picks the psycopg 3 driver for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the file but not its directory."""
    path = url.split("///", 1)[1] if "///" in url else ""
    if url.startswith("sqlite") and path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine with sane defaults: WAL + busy timeout on SQLite, pre-ping on PostgreSQL."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Autocommit at the driver level; SQLAlchemy issues BEGIN itself (below), so that
            # `begin_immediate` can take the write lock up front.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql(conn.info.pop("begin_sql", "BEGIN"))

        return engine
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[sa.Connection]:
    """A transaction that takes the write lock at BEGIN on SQLite (no upgrade deadlocks).

    On PostgreSQL it is an ordinary transaction; use `FOR UPDATE SKIP LOCKED` for claims.
    """
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn.info["begin_sql"] = "BEGIN IMMEDIATE"
        with conn.begin():
            yield conn


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to the engine that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def migrate(url: str, script_location: str, version_table: str, revision: str = "head") -> None:
    """Brings the database to the newest revision of one service's migrations (or to
    `revision`: a test of a data migration starts from the one before it).

    On PostgreSQL an advisory lock serializes concurrent starts (several replicas migrating at
    once); SQLite serializes writers by itself.
    """
    import zlib

    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    cfg.attributes["version_table"] = version_table
    _ensure_sqlite_dir(normalize_url(url))
    engine = sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_lock(:k)"),
                    {"k": zlib.crc32(version_table.encode())},
                )
                conn.commit()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
    finally:
        engine.dispose()


def run_alembic_environment(metadata: sa.MetaData, default_version_table: str) -> None:
    """The body of every service's `migrations/env.py`: run its revisions on the connection
    `migrate` hands over (or on `sqlalchemy.url`, for the alembic command line), recording them
    in the service's own version table."""
    from alembic import context

    config = context.config
    version_table = config.attributes.get("version_table", default_version_table)

    def run(connection: sa.Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()

    if (shared := config.attributes.get("connection")) is not None:
        run(shared)
        return
    url = config.get_main_option("sqlalchemy.url") or ""
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
        run(conn)
