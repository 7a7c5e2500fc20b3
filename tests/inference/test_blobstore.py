"""The blob store backends: streamed writes, atomic commit, abort leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from loomstack_kit.blobstore import DatabaseBlobStore, FilesystemBlobStore, blob_chunks


@pytest.fixture(params=["filesystem", "database"])
def store(request: pytest.FixtureRequest, domain, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs-test")
    return DatabaseBlobStore(domain.engine, chunk_bytes=1000)


def _visible(store, blob_id: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(list(store.read(blob_id)))
    except FileNotFoundError:
        return False


def test_roundtrip_in_chunks(store) -> None:  # type: ignore[no-untyped-def]
    data = bytes(range(256)) * 40
    writer = store.open_writer("file-abc")
    for i in range(0, len(data), 333):
        writer.write(data[i : i + 333])
    assert not _visible(store, "file-abc"), "nothing is visible before commit"
    writer.commit()
    assert writer.size == len(data)
    assert b"".join(store.read("file-abc", 500)) == data
    store.delete("file-abc")
    assert not _visible(store, "file-abc")


def test_abort_leaves_nothing(store, domain) -> None:  # type: ignore[no-untyped-def]
    writer = store.open_writer("file-gone")
    writer.write(b"x" * 5000)
    writer.abort()
    assert not _visible(store, "file-gone")
    if isinstance(store, FilesystemBlobStore):
        assert not [p for p in store.root.rglob("*") if p.is_file()]
    else:
        with domain.engine.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(blob_chunks)).scalar_one() == 0
            )


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", "x" * 200])
def test_ids_are_never_paths(store, bad: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="invalid blob id"):
        store.open_writer(bad)
