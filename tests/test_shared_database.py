"""Every service's migrations run on ONE PostgreSQL database (the chart's default), in any order.

Each service owns its tables, so no two services may create a table of the same name; the
database blob stores of inference and training keep their chunks apart.
"""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa

from loomstack_curation import __main__ as curation
from loomstack_inference import __main__ as inference
from loomstack_kit.blobstore import DatabaseBlobStore, blob_chunks
from loomstack_kit.database import create_db_engine, migrate
from loomstack_training import __main__ as training
from loomstack_training.tables import blob_chunks as training_chunks

SERVICES = {
    "inference": (inference.MIGRATIONS, "alembic_version_inference"),
    "curation": (curation.MIGRATIONS, curation.VERSION_TABLE),
    "training": (training.MIGRATIONS, training.VERSION_TABLE),
}


@pytest.mark.postgres
@pytest.mark.parametrize("order", list(itertools.permutations(SERVICES)), ids="-".join)
def test_all_migrations_share_one_database(order: tuple[str, ...]) -> None:
    from support import postgres_database

    with postgres_database() as url:
        for name in order:
            migrate(url, *SERVICES[name])
        engine = create_db_engine(url)
        try:
            tables = set(sa.inspect(engine).get_table_names())
            assert {"blob_chunks", "training_blob_chunks"} <= tables
            ours = DatabaseBlobStore(engine, table=training_chunks)
            theirs = DatabaseBlobStore(engine, table=blob_chunks)
            for store, data in ((ours, b"adapter"), (theirs, b"batch output")):
                writer = store.open_writer("blob-1")
                writer.write(data)
                writer.commit()
            assert b"".join(ours.read("blob-1")) == b"adapter"
            assert b"".join(theirs.read("blob-1")) == b"batch output"
        finally:
            engine.dispose()
