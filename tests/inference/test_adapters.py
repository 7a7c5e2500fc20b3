"""LoRA adapters as uploaded archives: the kit's archive format (and what it refuses), the
engine's adapter cache over a real FileStore on SQLite, and deleting adapters from the registry."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loomstack_inference.__main__ import MIGRATIONS
from loomstack_inference.adapters import AdapterCache, is_file_source
from loomstack_inference.files import FileStore
from loomstack_inference.registry import Registry
from loomstack_kit.archives import pack_directory, unpack_archive
from loomstack_kit.blobstore import open_blob_store
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import FailedPrecondition, InvalidArgument, NotFound


def _adapter_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (root / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (root / "nested").mkdir()
    (root / "nested" / "tokenizer.json").write_text("{}")
    return root


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _symlink(name: str, to: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = to
    return info


def test_pack_and_unpack_round_trip(tmp_path: Path) -> None:
    source = _adapter_dir(tmp_path / "adapter")
    archive = pack_directory(source)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as plain:  # not compressed
        assert "adapter_config.json" in plain.getnames()
    target = unpack_archive([archive[:100], archive[100:]], tmp_path / "out", required=None)
    for path in source.rglob("*"):
        if path.is_file():
            assert (target / path.relative_to(source)).read_bytes() == path.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_file("../escape.txt")], "unsafe path"),
        ([_file("/etc/absolute.txt")], "unsafe path"),
        ([(_symlink("link", "/etc/passwd"), b"")], "not a regular file"),
        ([_file("big.bin", b"y" * 2048)], "more than 1024 bytes"),
    ],
)
def test_unsafe_or_oversized_archives_are_refused_and_leave_nothing(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], message: str
) -> None:
    target = tmp_path / "cache" / "file-x"
    with pytest.raises(InvalidArgument, match=message):
        unpack_archive([_tar(members)], target, max_bytes=1024)
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_not_an_archive_and_missing_required_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"not a readable tar archive"):
        unpack_archive([b"definitely not gzip"], tmp_path / "a")
    with pytest.raises(InvalidArgument, match=r"no adapter_config\.json"):
        unpack_archive(
            [_tar([_file("weights.bin")])], tmp_path / "b", required="adapter_config.json"
        )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def stores(tmp_path: Path) -> tuple[FileStore, Registry]:
    url = f"sqlite:///{tmp_path / 'inference.db'}"
    migrate(url, MIGRATIONS, "alembic_version_inference")
    db = create_db_engine(url)
    blobs = open_blob_store("filesystem", root=tmp_path / "blobs", engine=db)
    return FileStore(db, blobs, 50 * 1024 * 1024), Registry(db)


def _upload(files: FileStore, data: bytes, purpose: str) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    record = asyncio.run(files.upload("team-a", "adapter.tar.gz", purpose, chunks(), system=True))
    return record.id


def test_the_cache_fetches_an_uploaded_adapter_once(
    tmp_path: Path, stores: tuple[FileStore, Registry]
) -> None:
    files, _ = stores
    source = _adapter_dir(tmp_path / "trained")
    file_id = _upload(files, pack_directory(source), "adapter")
    assert is_file_source(file_id) and not is_file_source(str(source))
    cache = AdapterCache(files, tmp_path / "engine-home" / "adapters", max_bytes=1024**2)
    assert cache.cached(file_id) is None
    assert cache.cached(str(source)) == str(source)  # a directory is used as it is

    local = Path(cache.fetch(file_id))
    assert local == tmp_path / "engine-home" / "adapters" / file_id
    assert (local / "adapter_config.json").read_text() == '{"r": 8, "peft_type": "LORA"}'
    assert (local / "nested" / "tokenizer.json").exists()
    assert cache.cached(file_id) == str(local)

    files.delete("team-a", file_id)  # the unpacked copy no longer needs the blob
    assert cache.fetch(file_id) == str(local)


def test_the_cache_refuses_other_files(tmp_path: Path, stores: tuple[FileStore, Registry]) -> None:
    files, _ = stores
    cache = AdapterCache(files, tmp_path / "adapters", max_bytes=1024**2)
    batch_file = _upload(files, b'{"custom_id": "a"}\n', "batch")
    with pytest.raises(InvalidArgument, match="purpose 'batch', not 'adapter'"):
        cache.fetch(batch_file)
    with pytest.raises(NotFound):
        cache.fetch("file-doesnotexist")
    junk = _upload(files, b"not an archive", "adapter")
    with pytest.raises(InvalidArgument, match=r"not a readable tar archive"):
        cache.fetch(junk)
    assert not (tmp_path / "adapters" / junk).exists()


def test_deleting_models(stores: tuple[FileStore, Registry]) -> None:
    _, registry = stores
    registry.register_model("base", "/models/base", 2048)
    registry.register_model("ft:base:a", "/adapters/a", 2048, parent="base", owned_by="team-a")
    with pytest.raises(FailedPrecondition, match="base model"):
        registry.delete_model("base", None)
    # Another project's adapter reads as an unknown one, and stays.
    with pytest.raises(NotFound, match="does not exist or you do not have access"):
        registry.delete_model("ft:base:a", "team-b")
    with pytest.raises(NotFound, match="does not exist or you do not have access"):
        registry.delete_model("ft:base:nope", "team-a")
    assert [m.id for m in registry.list_models(None)] == ["base", "ft:base:a"]
    registry.delete_model("ft:base:a", "team-a")
    assert [m.id for m in registry.list_models(None)] == ["base"]
    assert registry.adapters_of("base") == {}
