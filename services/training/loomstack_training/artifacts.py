"""Adapters, checkpoints and training data in the blob store (tar archives of directories).

Blob ids are derived from job ids only: `<job>-adapter`, `<job>-ckpt-<step>`, `<job>-train`.
"""

from __future__ import annotations

from pathlib import Path

from loomstack_kit.archives import pack_directory
from loomstack_kit.blobstore import BlobStore


def store_directory(blobs: BlobStore, blob_id: str, directory: Path) -> str:
    """Archives `directory` (the kit's tar format) into one blob; returns the blob id."""
    store_bytes(blobs, blob_id, pack_directory(directory))
    return blob_id


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
