"""Adapters, checkpoints and training data in the blob store (tar archives of directories).

Blob ids are derived from job ids only: `<job>-adapter`, `<job>-ckpt-<step>`, `<job>-train`.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from loomstack_kit.blobstore import BlobStore


def store_directory(blobs: BlobStore, blob_id: str, directory: Path) -> str:
    """Archives `directory` (its files, relative names) into one blob; returns the blob id."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(directory)))
    store_bytes(blobs, blob_id, buffer.getvalue())
    return blob_id


def restore_directory(blobs: BlobStore, blob_id: str, directory: Path) -> Path:
    """Unpacks a blob made by `store_directory` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    data = b"".join(blobs.read(blob_id))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")
    return directory


def store_bytes(blobs: BlobStore, blob_id: str, data: bytes) -> str:
    """One blob with the given content."""
    writer = blobs.open_writer(blob_id)
    try:
        writer.write(data)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return blob_id


def read_bytes(blobs: BlobStore, blob_id: str) -> bytes:
    """A blob's whole content."""
    return b"".join(blobs.read(blob_id))
