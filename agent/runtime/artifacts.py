"""Downloaded content, addressed by its sha256; its APK/OTA metadata parsed once per content.

Theory of operation: a download is checked against the server's sha256 (agent.runtime.downloads)
and becomes an artifact (agent.models): its sha256 and size, its parsed metadata, and its file
when the device keeps one. `MetadataCache` parses each content once, in a worker thread, keyed
by sha256; whoever asks for a content while it is being parsed waits for that parse. A device
sees its downloads through `DeviceArtifacts`:

- `FileArtifacts` (a rig): files in `<state dir>/downloads/`, resumable (Range/If-Range), that
  the platform installs from.
- `ArtifactStore.device()` (a simulated fleet, one store for every agent of the process): each
  agent still pulls the bytes from the server (the load the server must see) but streams them
  into a `HashingSink` that keeps only their sha256 and size. The store keeps one file per
  content (`<root>/<sha256>`), written by the first agent that fetched it; agents fetching the
  same fileUuid meanwhile hash and wait for it, and one whose content the store lacks (the
  first download failed, or the file changed) downloads it into a file itself. A download that
  drops part-way is resumed by the same device's next attempt (Range, as on a rig): the device
  keeps what it had (its sink, or its part file) until then and resumes it in the same mode,
  whatever the other devices do meanwhile (`ArtifactStore.content`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from agent.errors import FormatError, TransportError
from agent.models import ApkArtifact, OtaArtifact
from agent.protocol import Credentials
from agent.runtime.downloads import Fetched, fetch, sha256_of
from agent.transport.base import Sink, Transport
from midm_common.apk import ApkMetadata, read_apk_metadata
from midm_common.ota import OtaMetadata, read_ota_metadata

Meta = TypeVar("Meta", ApkMetadata, OtaMetadata)
DOWNLOADS = "downloads"  # the folder of a rig's downloads in its state dir


class DigestSink(Sink, Protocol):
    def sha256(self) -> str:
        """The hex sha256 of what the sink holds."""
        ...


class HashingSink:
    """A sink that keeps only the sha256 and the size of the bytes it was given."""

    __slots__ = ("_digest", "_size")

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self._size += len(chunk)

    def truncate(self) -> None:
        self._digest = hashlib.sha256()
        self._size = 0

    def sha256(self) -> str:
        return self._digest.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactStatistics:
    parsed: int  # contents parsed (each once)
    reused: int  # asks answered from a parse done or under way
    contents: int  # contents held by a shared store (0 for a cache alone)


class _Abandoned(Exception):
    """The parse a caller waited for was cancelled: the caller parses itself."""


class MetadataCache:
    """sha256 -> parsed APK or OTA metadata, for every agent of the process.

    A content is parsed once (midm_common's readers, in a worker thread); a format error is
    kept like a result (the same bytes fail the same way), except an unreadable file, which
    is the file's problem and not the content's.
    """

    def __init__(self) -> None:
        self._apks: dict[str, asyncio.Future[ApkMetadata]] = {}
        self._otas: dict[str, asyncio.Future[OtaMetadata]] = {}
        self._parsed = 0
        self._reused = 0

    async def apk(self, sha256: str, path: Path) -> ApkMetadata:
        """The metadata of the APK whose content is `sha256` (the file `path` if parsed now)."""
        return await self._get(self._apks, sha256, path, read_apk_metadata)

    async def ota(self, sha256: str, path: Path) -> OtaMetadata:
        return await self._get(self._otas, sha256, path, read_ota_metadata)

    async def _get(
        self,
        table: dict[str, asyncio.Future[Meta]],
        sha256: str,
        path: Path,
        parse: Callable[[Path], Meta],
    ) -> Meta:
        while (known := table.get(sha256)) is not None:
            self._reused += 1
            try:
                return await asyncio.shield(known)
            except _Abandoned:
                continue  # its parser was cancelled: parse here
            except FormatError as exc:
                raise _copy(exc) from None
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        table[sha256] = future
        self._parsed += 1
        try:
            meta = await asyncio.to_thread(parse, path)
        except FormatError as exc:
            if exc.reason == "unreadable":
                del table[sha256]
            future.set_exception(_copy(exc))
            future.exception()  # retrieved: nobody may be waiting
            raise
        except BaseException:
            del table[sha256]
            future.set_exception(_Abandoned())
            future.exception()
            raise
        future.set_result(meta)
        return meta

    def statistics(self, contents: int = 0) -> ArtifactStatistics:
        return ArtifactStatistics(parsed=self._parsed, reused=self._reused, contents=contents)


def _copy(exc: FormatError) -> FormatError:
    """The same error, as a new exception for each caller that meets it."""
    return type(exc)(str(exc), reason=exc.reason)


class DeviceArtifacts(Protocol):
    """One device's downloads, as ProfileRunner fetches them."""

    async def app(self, file_uuid: str) -> ApkArtifact:
        """The APK `file_uuid`, downloaded and checked, its metadata read (ApkError if bad)."""
        ...

    async def image(self, file_uuid: str) -> OtaArtifact:
        """The OTA package `file_uuid`, like `app` (OtaPackageError if bad)."""
        ...

    def downloaded(self) -> frozenset[str]:
        """The fileUuids whose content this device holds (installable while offline)."""
        ...


class FileArtifacts:
    """A rig's downloads: resumable files in `folder`, metadata from `cache`."""

    __slots__ = ("cache", "creds", "folder", "transport")

    def __init__(
        self,
        folder: Path,
        transport: Transport,
        creds: Callable[[], Credentials],
        cache: MetadataCache | None = None,
    ) -> None:
        self.folder = folder
        self.transport = transport
        self.creds = creds
        self.cache = cache or MetadataCache()

    async def _fetch(self, file_uuid: str) -> tuple[Fetched, Path]:
        fetched = await fetch(self.transport, self.creds(), file_uuid, self.folder)
        assert fetched.path is not None  # into a folder: a file
        return fetched, fetched.path

    async def app(self, file_uuid: str) -> ApkArtifact:
        fetched, path = await self._fetch(file_uuid)
        meta = await self.cache.apk(fetched.sha256, path)
        return ApkArtifact(sha256=fetched.sha256, size=fetched.size, metadata=meta, path=path)

    async def image(self, file_uuid: str) -> OtaArtifact:
        fetched, path = await self._fetch(file_uuid)
        meta = await self.cache.ota(fetched.sha256, path)
        return OtaArtifact(sha256=fetched.sha256, size=fetched.size, metadata=meta, path=path)

    def downloaded(self) -> frozenset[str]:
        if not self.folder.is_dir():
            return frozenset()
        return frozenset(p.name for p in self.folder.iterdir() if "." not in p.name)


Partials = dict[str, "HashingSink | Path"]  # fileUuid -> what a dropped download left


@dataclass(frozen=True, slots=True, kw_only=True)
class _Content:
    sha256: str
    size: int
    path: Path  # the store's copy, parsed once


class ArtifactStore:
    """Content shared by the agents of one process (a simulated fleet): one file and one parse
    per sha256 under `root`; each agent pulls the bytes itself (see the module docstring)."""

    def __init__(self, root: Path, cache: MetadataCache | None = None) -> None:
        self.root = root
        self.cache = cache or MetadataCache()
        self._contents: dict[str, _Content] = {}  # sha256 -> the file under root
        self._known: dict[str, str] = {}  # fileUuid -> sha256 of its content, once held
        self._writing: dict[str, set[asyncio.Future[None]]] = {}  # fileUuid -> its writers
        self._seq = itertools.count()

    def device(self, transport: Transport, creds: Callable[[], Credentials]) -> StreamedArtifacts:
        """One agent's view of the store, pulling through that agent's transport."""
        return StreamedArtifacts(self, transport, creds)

    def statistics(self) -> ArtifactStatistics:
        return self.cache.statistics(contents=len(self._contents))

    async def content(
        self,
        transport: Transport,
        creds: Credentials,
        file_uuid: str,
        partial: Partials | None = None,
    ) -> _Content:
        """Pull `file_uuid` through `transport` and return the store's copy of its content;
        `partial` holds the device's dropped downloads (resumed here, kept if this drops).

        Who writes: a device resumes what its dropped attempt left, in the mode it was in (its
        part file as a writer, even beside another writer; its sink as a hasher); a device
        holding nothing writes when nobody is writing a content the store does not hold yet,
        and hashes otherwise. A device that took the other mode on its next attempt threw its
        bytes away: on a link that cuts every download from the first byte
        (scenarios/download-resume.toml), devices went from one mode to the other and none
        ever finished.
        """
        previous = partial.pop(file_uuid, None) if partial else None
        if isinstance(previous, Path):
            return await self._write(transport, creds, file_uuid, partial, part=previous)
        if previous is None and not self._writing.get(file_uuid) and file_uuid not in self._known:
            return await self._write(transport, creds, file_uuid, partial)
        sink = previous if previous is not None else HashingSink()
        try:
            fetched = await fetch(transport, creds, file_uuid, sink)
        except TransportError:
            if partial is not None and sink.size:
                partial[file_uuid] = sink  # the next attempt asks for the rest
            raise
        held = await self._settled(file_uuid, fetched.sha256)
        if held is not None:
            return held
        # no writer made it (they dropped, or the file changed): this device writes the file,
        # and keeps its part if this attempt drops too
        return await self._write(transport, creds, file_uuid, partial)

    async def _settled(self, file_uuid: str, sha256: str) -> _Content | None:
        """The store's copy of `sha256` once one of the writers of `file_uuid` in flight now
        has made it; None if the store lacks it once they have all ended. Writers that start
        later are not waited for: each waiter would wait for the next, one download at a time."""
        pending = set(self._writing.get(file_uuid, ()))
        while (held := self._contents.get(sha256)) is None and pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        return held

    async def _write(
        self,
        transport: Transport,
        creds: Credentials,
        file_uuid: str,
        partial: Partials | None = None,
        *,
        part: Path | None = None,
    ) -> _Content:
        """Download `file_uuid` into a part folder of this device's (`part`: the one its dropped
        attempt left, resumed) and make it the store's copy. Each writer has a folder of its own
        (`incoming/<fileUuid>-<n>`); two writers of one content both rename a verified copy to
        `<root>/<sha256>` (atomic, the same bytes) and the store keeps the first."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writing.setdefault(file_uuid, set()).add(done)
        incoming = part or self.root / "incoming" / f"{file_uuid}-{next(self._seq)}"
        keep = False
        try:
            fetched = await fetch(transport, creds, file_uuid, incoming)
            assert fetched.path is not None
            content = _Content(
                sha256=fetched.sha256, size=fetched.size, path=self.root / fetched.sha256
            )
            await asyncio.to_thread(fetched.path.replace, content.path)
            self._contents.setdefault(content.sha256, content)
            self._known[file_uuid] = content.sha256
            return self._contents[content.sha256]
        except TransportError:
            if partial is not None:
                partial[file_uuid] = incoming  # the device resumes its part file next time
                keep = True
            raise
        finally:
            writers = self._writing[file_uuid]
            writers.discard(done)
            if not writers:
                del self._writing[file_uuid]
            done.set_result(None)  # before any await here: a cancelled cleanup still tells
            if not keep:
                await asyncio.to_thread(shutil.rmtree, incoming, ignore_errors=True)


class StreamedArtifacts:
    """A simulated device's downloads: hashed as they stream in, held once by the store."""

    __slots__ = ("_downloaded", "_partial", "creds", "store", "transport")

    def __init__(
        self,
        store: ArtifactStore,
        transport: Transport,
        creds: Callable[[], Credentials],
    ) -> None:
        self.store = store
        self.transport = transport
        self.creds = creds
        self._downloaded: frozenset[str] = frozenset()  # the shared empty one: most never fill it
        self._partial: Partials | None = None  # dropped downloads, until resumed (made on need)

    async def app(self, file_uuid: str) -> ApkArtifact:
        content = await self.store.content(self.transport, self.creds(), file_uuid, self._held())
        meta = await self.store.cache.apk(content.sha256, content.path)
        self._downloaded |= {file_uuid}
        return ApkArtifact(sha256=content.sha256, size=content.size, metadata=meta)

    async def image(self, file_uuid: str) -> OtaArtifact:
        content = await self.store.content(self.transport, self.creds(), file_uuid, self._held())
        meta = await self.store.cache.ota(content.sha256, content.path)
        self._downloaded |= {file_uuid}
        return OtaArtifact(sha256=content.sha256, size=content.size, metadata=meta)

    def downloaded(self) -> frozenset[str]:
        return self._downloaded

    def _held(self) -> Partials:
        if self._partial is None:
            self._partial = {}
        return self._partial


def apk_artifact(path: Path) -> ApkArtifact:
    """An APK file as an artifact, parsed here (tools and tests; agents use a DeviceArtifacts)."""
    return ApkArtifact(
        sha256=sha256_of(path),
        size=path.stat().st_size,
        metadata=read_apk_metadata(path),
        path=path,
    )


def ota_artifact(path: Path) -> OtaArtifact:
    """An OTA package file as an artifact, parsed here (tools and tests)."""
    return OtaArtifact(
        sha256=sha256_of(path),
        size=path.stat().st_size,
        metadata=read_ota_metadata(path),
        path=path,
    )
