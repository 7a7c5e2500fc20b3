"""Files: metadata in the `files` table, content in the blob store under generated ids."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.blobstore import BlobStore
from loomstack_kit.errors import InvalidArgument, NotFound, TooLarge

from .ids import new_id
from .tables import files

UPLOAD_PURPOSES = ("batch", "fine-tune", "user_data")
# Written by the services only: batch results, fine-tuning results, LoRA adapter archives.
ADAPTER_PURPOSE = "adapter"
BATCH_OUTPUT_PURPOSE = "batch_output"
SYSTEM_PURPOSES = (BATCH_OUTPUT_PURPOSE, "fine-tune-results", ADAPTER_PURPOSE)


@dataclass(frozen=True)
class FileRecord:
    """A stored file's metadata."""

    id: str
    project: str
    purpose: str
    filename: str
    bytes: int
    line_count: int
    sha256: str
    blob_id: str
    created_at: float


def _record(row: sa.Row) -> FileRecord:
    return FileRecord(**row._mapping)


def _visible(query: sa.Select, project: str | None) -> sa.Select:
    return query if project is None else query.where(files.c.project == project)


class FileStore:
    """Uploads, lookups and deletes, always scoped to a project (None = admin, all)."""

    def __init__(self, engine: Engine, blobs: BlobStore, max_bytes: int) -> None:
        self.engine = engine
        self.blobs = blobs
        self.max_bytes = max_bytes

    async def upload(
        self,
        project: str,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        *,
        system: bool = False,
    ) -> FileRecord:
        """Streams chunks into a new blob; nothing is recorded unless all of it arrives."""
        allowed = UPLOAD_PURPOSES + (SYSTEM_PURPOSES if system else ())
        if purpose not in allowed:
            raise InvalidArgument(
                f"invalid purpose {purpose!r}: use one of {', '.join(UPLOAD_PURPOSES)}",
                param="purpose",
            )
        file_id = new_id("file-")
        # Blob I/O runs in worker threads: a large upload must not stall the other RPCs.
        writer = await asyncio.to_thread(self.blobs.open_writer, file_id)
        lines, last = 0, b"\n"
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if writer.size + len(chunk) > self.max_bytes:
                    raise TooLarge(
                        f"file is larger than the limit of {self.max_bytes} bytes",
                        param="file",
                        code="file_too_large",
                    )
                await asyncio.to_thread(writer.write, chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
            await asyncio.to_thread(writer.commit)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        if last != b"\n":
            lines += 1
        return await asyncio.to_thread(
            self.record_blob, project, filename, purpose, file_id, writer.size, lines, writer.sha256
        )

    def write_lines(
        self, project: str, filename: str, purpose: str, parts: Iterable[Iterable[bytes]]
    ) -> str | None:
        """Stores the lines of `parts`, one after another, as a new file (blocking; each line
        ends with its newline); returns its id, or None and stores nothing when there is none."""
        file_id = new_id("file-")
        writer = self.blobs.open_writer(file_id)
        lines = 0
        try:
            for part in parts:
                for line in part:
                    writer.write(line)
                    lines += 1
            if lines == 0:
                writer.abort()
                return None
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.record_blob(project, filename, purpose, file_id, writer.size, lines, writer.sha256)
        return file_id

    def record_blob(
        self,
        project: str,
        filename: str,
        purpose: str,
        file_id: str,
        size: int,
        lines: int,
        sha256: str,
    ) -> FileRecord:
        """Records a blob already committed under `file_id` as a file."""
        rec = FileRecord(
            id=file_id,
            project=project,
            purpose=purpose,
            filename=filename[:512] or "upload",
            bytes=size,
            line_count=lines,
            sha256=sha256,
            blob_id=file_id,
            created_at=time.time(),
        )
        with self.engine.begin() as conn:
            conn.execute(files.insert().values(**rec.__dict__))
        return rec

    def get(self, project: str | None, file_id: str) -> FileRecord:
        """One file, or NotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(
                _visible(sa.select(files).where(files.c.id == file_id), project)
            ).first()
        if row is None:
            raise NotFound(f"no file with id {file_id!r}", param="file_id", code="file_not_found")
        return _record(row)

    def list_files(
        self, project: str | None, purpose: str = "", limit: int = 100, after: str = ""
    ) -> tuple[list[FileRecord], bool]:
        """Newest first; returns (page, has_more)."""
        query = _visible(sa.select(files), project)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        if after:
            anchor = self.get(project, after)
            query = query.where(
                sa.or_(
                    files.c.created_at < anchor.created_at,
                    sa.and_(files.c.created_at == anchor.created_at, files.c.id < anchor.id),
                )
            )
        query = query.order_by(files.c.created_at.desc(), files.c.id.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = [_record(r) for r in conn.execute(query)]
        return rows[:limit], len(rows) > limit

    def delete(self, project: str | None, file_id: str) -> None:
        """Removes the record, then the content."""
        rec = self.get(project, file_id)
        with self.engine.begin() as conn:
            conn.execute(files.delete().where(files.c.id == rec.id))
        self.blobs.delete(rec.blob_id)

    def read(self, project: str | None, file_id: str) -> Iterator[bytes]:
        """The content in chunks."""
        rec = self.get(project, file_id)
        return self.blobs.read(rec.blob_id)
