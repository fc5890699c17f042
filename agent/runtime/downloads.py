"""Files from the server (`/ota/api/file/{fileUuid}`), resumable and checked.

A download goes to `<folder>/<fileUuid>.part`; after a dropped connection the next attempt asks
for the rest (`Range`, with `If-Range` = the ETag seen before, so a changed file starts over).
The finished file is checked against the server's `X-Checksum-SHA256` (or the ETag) and only
then renamed to `<fileUuid>`; a mismatch deletes it and raises DownloadError. A finished file
is never downloaded again.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from agent import protocol
from agent.errors import AgentError
from agent.protocol import Credentials
from agent.transport.base import Transport

FILE_PATH = "/ota/api/file/{}"


class DownloadError(AgentError):
    hint = "the file on the server is damaged or changed during the download"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def fetch(transport: Transport, creds: Credentials, file_uuid: str, folder: Path) -> Path:
    """The verified file, downloaded or resumed as needed."""
    final = folder / file_uuid
    if await asyncio.to_thread(final.exists):
        return final
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    part = folder / f"{file_uuid}.part"
    etag_file = folder / f"{file_uuid}.etag"
    offset = part.stat().st_size if await asyncio.to_thread(part.exists) else 0
    headers = protocol.device_headers(creds)
    if offset and await asyncio.to_thread(etag_file.exists):
        headers["If-Range"] = await asyncio.to_thread(etag_file.read_text)
    answer = await transport.download(FILE_PATH.format(file_uuid), headers, part, offset)
    if answer.status == 416:  # nothing left to send: the part is complete (or wrong): check it
        pass
    elif answer.status not in (200, 206):
        raise DownloadError(f"download of {file_uuid}: HTTP {answer.status}")
    etag = answer.headers.get("ETag")
    if etag:
        await asyncio.to_thread(etag_file.write_text, etag)
    expected = answer.headers.get("X-Checksum-SHA256") or (etag or "").strip('"')
    actual = await asyncio.to_thread(sha256_of, part)
    if expected and actual != expected:
        await asyncio.to_thread(part.unlink, missing_ok=True)
        raise DownloadError(f"download of {file_uuid}: sha256 {actual} is not {expected}")
    await asyncio.to_thread(part.replace, final)
    await asyncio.to_thread(etag_file.unlink, missing_ok=True)
    return final
