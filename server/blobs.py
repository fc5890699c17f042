"""Content-addressed file storage for uploads: `<root>/<sha[:2]>/<sha256>`.

Uploads stream into `<root>/tmp/` while their sha256 is computed and their size checked against
the limit (an oversize upload stops at the limit, not after); `commit` fsyncs and renames the
temp file into place, so a blob is either whole or absent. Identical bytes are stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import BodyPartReader

from server.errors import TooLarge

CHUNK = 256 * 1024


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

    def prepare(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.glob("*.part"):
            stale.unlink(missing_ok=True)

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
            file_name=Path(part.filename or "upload").name,
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
