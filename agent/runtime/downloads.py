"""Files from the server (`/ota/api/file/{fileUuid}`), checked against their sha256.

Into a folder (a rig): a download goes to `<folder>/<fileUuid>.part`; after a dropped connection
the next attempt asks for the rest (`Range`, with `If-Range` = the ETag seen before, so a changed
file starts over). The finished file is checked against the server's `X-Checksum-SHA256` (or the
ETag) and only then renamed to `<fileUuid>`, its sha256 kept beside it (`<fileUuid>.sha256`); a
mismatch deletes it and raises DownloadError. A finished file is never downloaded again.

Into a sink (a simulated device, agent.runtime.artifacts): the bytes are streamed into the sink
(which hashes them) through the transport's `download_to`, and checked the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent import protocol
from agent.errors import AgentError
from agent.protocol import Credentials
from agent.transport.base import Download, Transport

if TYPE_CHECKING:
    from agent.runtime.artifacts import DigestSink


class DownloadError(AgentError):
    hint = "the file on the server is damaged or changed during the download"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetched:
    """A verified download: its content's sha256 and size, and its file (None for a sink)."""

    sha256: str
    size: int
    path: Path | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_status(file_uuid: str, answer: Download) -> None:
    # 416: nothing left to send, the part is complete (or wrong): its hash decides
    if answer.status not in (200, 206, 416):
        raise DownloadError(f"download of {file_uuid}: HTTP {answer.status}")


def _check_sha256(file_uuid: str, answer: Download, actual: str) -> None:
    expected = protocol.expected_sha256(answer.headers)
    if expected and actual != expected:
        raise DownloadError(f"download of {file_uuid}: sha256 {actual} is not {expected}")


async def fetch(
    transport: Transport, creds: Credentials, file_uuid: str, target: Path | DigestSink
) -> Fetched:
    """The verified content of `file_uuid`: into the folder `target` (downloaded or resumed as
    needed), or streamed into the sink `target`."""
    if isinstance(target, Path):
        return await _fetch_file(transport, creds, file_uuid, target)
    return await _fetch_into(transport, creds, file_uuid, target)


async def _fetch_into(
    transport: Transport, creds: Credentials, file_uuid: str, sink: DigestSink
) -> Fetched:
    path = protocol.file_path(file_uuid)
    answer = await transport.download_to(path, protocol.download_headers(creds), sink)
    _check_status(file_uuid, answer)
    actual = sink.sha256()
    _check_sha256(file_uuid, answer, actual)
    return Fetched(sha256=actual, size=sink.size, path=None)


async def _fetch_file(
    transport: Transport, creds: Credentials, file_uuid: str, folder: Path
) -> Fetched:
    final = folder / file_uuid
    digest_file = folder / f"{file_uuid}.sha256"
    if await asyncio.to_thread(final.exists):
        return await asyncio.to_thread(_finished, final, digest_file)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    part = folder / f"{file_uuid}.part"
    etag_file = folder / f"{file_uuid}.etag"
    offset = part.stat().st_size if await asyncio.to_thread(part.exists) else 0
    etag_seen = None
    if offset and await asyncio.to_thread(etag_file.exists):
        etag_seen = await asyncio.to_thread(etag_file.read_text)
    headers = protocol.download_headers(creds, if_range=etag_seen)
    answer = await transport.download(protocol.file_path(file_uuid), headers, part, offset)
    _check_status(file_uuid, answer)
    etag = answer.headers.get(protocol.ETAG_HEADER)
    if etag:
        await asyncio.to_thread(etag_file.write_text, etag)
    actual = await asyncio.to_thread(sha256_of, part)
    try:
        _check_sha256(file_uuid, answer, actual)
    except DownloadError:
        await asyncio.to_thread(part.unlink, missing_ok=True)  # never resume from wrong bytes
        raise
    size = (await asyncio.to_thread(part.stat)).st_size
    await asyncio.to_thread(digest_file.write_text, actual)
    await asyncio.to_thread(part.replace, final)
    await asyncio.to_thread(etag_file.unlink, missing_ok=True)
    return Fetched(sha256=actual, size=size, path=final)


def _finished(final: Path, digest_file: Path) -> Fetched:
    """A file downloaded before: its sha256 as kept beside it (hashed once if it was not)."""
    try:
        digest = digest_file.read_text().strip()
    except FileNotFoundError:
        digest = ""
    if len(digest) != 64:
        digest = sha256_of(final)
        digest_file.write_text(digest)
    return Fetched(sha256=digest, size=final.stat().st_size, path=final)
