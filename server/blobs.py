"""Content-addressed file storage for uploads: `<root>/<sha[:2]>/<sha256>`.

Uploads stream into `<root>/tmp/` while their sha256 is computed and their size checked against
the limit (an oversize upload stops at the limit, not after); `commit` fsyncs and renames the
temp file into place, so a blob is either whole or absent. Identical bytes are stored once.
The stored file name is the multipart filename sanitised (server.domain.filenames).

At start (`prepare`, before any request): every file in the temp area is deleted (uploads cut
by a stop), and so is every blob that no file row references (the server was killed between
moving it into place and committing its row: the rename happens inside the write transaction).
Only names that are blobs (`<2 hex>/<64 hex>` with a matching prefix) are considered; other
files under the root are left alone. One server uses a files folder (as it does a database).
The catalog is attached by the Services container (server.context); a BlobStore alone (no
database) only empties its temp area.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import BodyPartReader

from server.domain.filenames import sanitize_file_name
from server.errors import TooLarge
from server.store import catalog

if TYPE_CHECKING:
    from server.store.db import Database

log = structlog.get_logger("server.blobs")
CHUNK = 256 * 1024
_PREFIX = re.compile(r"[0-9a-f]{2}", re.ASCII)
_BLOB = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    temp_path: Path
    sha256: str
    length: int
    file_name: str


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._catalog: Database | None = None

    def attach(self, db: Database) -> None:
        """The database whose file rows say which blobs are referenced (for `prepare`)."""
        self._catalog = db

    def prepare(self) -> None:
        """At start, before any upload: an empty temp area, and no unreferenced blob."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        temp = [p for p in self.tmp.iterdir() if p.is_file() or p.is_symlink()]
        for stale in temp:
            stale.unlink(missing_ok=True)
        orphans = self._orphans() if self._catalog is not None else []
        for orphan in orphans:
            orphan.unlink(missing_ok=True)
        if temp or orphans:
            log.warning(
                "blobs.cleaned",
                temp_files=len(temp),
                orphan_blobs=len(orphans),
                root=str(self.root),
            )

    def _orphans(self) -> list[Path]:
        assert self._catalog is not None
        referenced = self._catalog.read_sync(catalog.referenced_blobs)
        found = []
        for folder in self.root.iterdir():
            if not (folder.is_dir() and _PREFIX.fullmatch(folder.name)):
                continue
            for blob in folder.iterdir():
                if (
                    _BLOB.fullmatch(blob.name)
                    and blob.name.startswith(folder.name)
                    and blob.name not in referenced
                    and blob.is_file()
                ):
                    found.append(blob)
        return found

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    async def receive(self, part: BodyPartReader, limit: int) -> Received:
        temp = self.tmp / f"{uuid.uuid4()}.part"
        digest = hashlib.sha256()
        length = 0
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, temp.open, "wb")
        try:
            while chunk := await part.read_chunk(CHUNK):
                length += len(chunk)
                if length > limit:
                    raise TooLarge(f"file: upload is larger than the limit of {limit} bytes")
                digest.update(chunk)
                await loop.run_in_executor(None, handle.write, chunk)
            await loop.run_in_executor(None, _flush_and_sync, handle)
        except BaseException:
            handle.close()
            temp.unlink(missing_ok=True)
            raise
        handle.close()
        return Received(
            temp_path=temp,
            sha256=digest.hexdigest(),
            length=length,
            file_name=sanitize_file_name(part.filename),
        )

    def commit(self, received: Received) -> Path:
        """Move the upload into place (blocking; run in a thread). Idempotent per content."""
        final = self.path_for(received.sha256)
        if final.exists():
            received.temp_path.unlink(missing_ok=True)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        received.temp_path.replace(final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    @staticmethod
    def discard(received: Received) -> None:
        received.temp_path.unlink(missing_ok=True)


def _flush_and_sync(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]
