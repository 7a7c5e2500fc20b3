"""Where an engine finds a LoRA adapter's files.

A registered adapter's `source` is either a directory the engine can read (the local stack, a
shared volume) or the id of a file in this service's Files store (purpose `adapter`): a
tar of the adapter directory, uploaded by the training service. On Kubernetes the training
pods and the engines share no volume, so every engine fetches such an archive from the blob
store the first time it serves the adapter and unpacks it once into its local cache
(`<home>/adapters/<file id>`); later engines' and later calls' lookups are a stat.
"""

from __future__ import annotations

import logging
from pathlib import Path

from loomstack_kit.archives import unpack_archive
from loomstack_kit.errors import InvalidArgument

from .files import ADAPTER_PURPOSE, FileStore

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
FILE_PREFIX = "file-"


def is_file_source(source: str) -> bool:
    """Whether `source` names an uploaded adapter archive rather than a directory."""
    return source.startswith(FILE_PREFIX) and "/" not in source


class AdapterCache:
    """Uploaded adapter archives, unpacked on this engine's disk."""

    def __init__(self, files: FileStore, root: Path, *, max_bytes: int) -> None:
        self.files = files
        self.root = root
        self.max_bytes = max_bytes

    def cached(self, source: str) -> str | None:
        """The local directory of `source` when it needs no download, else None."""
        if not is_file_source(source):
            return source
        target = self.root / source
        return str(target) if (target / ADAPTER_CONFIG).is_file() else None

    def fetch(self, source: str) -> str:
        """Blocking: the local directory of `source`, downloading and unpacking it if needed.

        NotFound for an unknown file, InvalidArgument for a file that is not an adapter
        archive (nothing is left in the cache then).
        """
        local = self.cached(source)
        if local is not None:
            return local
        record = self.files.get(None, source)
        if record.purpose != ADAPTER_PURPOSE:
            raise InvalidArgument(
                f"file {source!r} has purpose {record.purpose!r}, not {ADAPTER_PURPOSE!r}",
                param="source",
            )
        target = self.root / source
        unpack_archive(
            self.files.read(None, source), target, max_bytes=self.max_bytes, required=ADAPTER_CONFIG
        )
        log.info("adapter archive unpacked", extra={"source": source, "path": str(target)})
        return str(target)
