"""The artifacts seam: a download checked against its sha256, its metadata parsed once per content
(not once per agent), simulated agents streaming the bytes into a hashing sink, and platforms
that never parse a package they are given."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.errors import ApkError, TransportError
from agent.models import ApkArtifact, BuildInfo, HardwareInfo, OtaArtifact
from agent.platforms.simulated import SimulatedPlatform
from agent.protocol import Credentials, Request, Response
from agent.runtime.agent import Agent
from agent.runtime.artifacts import (
    ArtifactStore,
    HashingSink,
    MetadataCache,
    apk_artifact,
    ota_artifact,
)
from agent.runtime.downloads import DownloadError, fetch
from agent.transport.base import Download, Sink
from agent.transport.mock import MockTransport
from midm_common.apk import ApkMetadata
from tests.agent.agent_harness import RecordingTransport, make_agent, sim_platform
from tests.helpers import APKS, Client, Server, ota_zip

CREDS = Credentials(api_key="k", device_token="t")
FP1 = "acme/sim/sim:14/A/1:user/release-keys"
FP2 = "acme/sim/sim:14/A/2:user/release-keys"


def serving(files: dict[str, bytes]) -> tuple[MockTransport, list[str]]:
    """A transport whose server holds `files` (by fileUuid) and counts each file's downloads."""
    pulled: list[str] = []

    async def handler(request: Request) -> Response:
        file_uuid = request.path.rsplit("/", 1)[-1]
        pulled.append(file_uuid)
        body = files[file_uuid]
        return Response(
            status=200,
            body=body,
            headers={"X-Checksum-SHA256": hashlib.sha256(body).hexdigest()},
        )

    return MockTransport(handler), pulled


async def test_concurrent_asks_for_one_content_wait_for_one_parse() -> None:
    """Ten agents asking for the same content at once: parsed once, the same metadata to all."""
    cache = MetadataCache()
    path = APKS / "basic-v1.apk"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    results = await asyncio.gather(*(cache.apk(digest, path) for _ in range(10)))
    assert {r.package_name for r in results} == {"com.example.basic"}
    assert cache.statistics().parsed == 1 and cache.statistics().reused == 9
    again = await cache.apk(digest, Path("/nowhere"))  # known content: the file is not read
    assert again == results[0] and cache.statistics().parsed == 1


async def test_a_bad_content_fails_once_an_unreadable_file_is_retried(tmp_path: Path) -> None:
    """The same bytes fail the same way (kept, not parsed again); a missing file is the file's
    problem, so the next ask parses."""
    cache = MetadataCache()
    bad = APKS / "corrupt-truncated.apk"
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    for _ in range(2):
        with pytest.raises(ApkError) as caught:
            await cache.apk(digest, bad)
        assert caught.value.reason == "bad_zip"
    assert cache.statistics().parsed == 1
    with pytest.raises(ApkError, match="cannot read"):
        await cache.apk("0" * 64, tmp_path / "missing.apk")
    good = APKS / "basic-v1.apk"
    assert (await cache.apk("0" * 64, good)).package_name == "com.example.basic"
    assert cache.statistics().parsed == 3


async def test_a_cancelled_parse_leaves_the_waiters_to_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first asker is cancelled mid-parse: a caller waiting for it parses itself."""
    release = threading.Event()
    started = threading.Event()
    calls: list[Path] = []
    meta = apk_artifact(APKS / "basic-v1.apk").metadata

    def slow(path: Path) -> ApkMetadata:
        calls.append(path)
        started.set()
        release.wait(30)
        return meta

    monkeypatch.setattr("agent.runtime.artifacts.read_apk_metadata", slow)
    cache = MetadataCache()
    first = asyncio.ensure_future(cache.apk("a" * 64, Path("first")))
    await asyncio.to_thread(started.wait, 30)
    second = asyncio.ensure_future(cache.apk("a" * 64, Path("second")))
    await asyncio.sleep(0)  # let `second` start waiting for `first`
    first.cancel()
    release.set()
    assert (await second).package_name == "com.example.basic"
    assert first.cancelled() and calls == [Path("first"), Path("second")]


async def test_fleet_agents_stream_and_the_store_keeps_one_copy(tmp_path: Path) -> None:
    """Five simulated devices fetch one APK at once: each pulls the bytes (five downloads on
    the server), none keeps a file, the store holds one copy, parsed once."""
    content = (APKS / "basic-v1.apk").read_bytes()
    transport, pulled = serving({"F1": content})
    store = ArtifactStore(tmp_path / "store")
    devices = [store.device(transport, lambda: CREDS) for _ in range(5)]
    artifacts = await asyncio.gather(*(d.app("F1") for d in devices))
    assert pulled == ["F1"] * 5
    assert {a.sha256 for a in artifacts} == {hashlib.sha256(content).hexdigest()}
    assert all(a.path is None and a.metadata.package_name == "com.example.basic" for a in artifacts)
    assert all(d.downloaded() == {"F1"} for d in devices)
    stats = store.statistics()
    assert (stats.parsed, stats.contents) == (1, 1)
    kept = [p.name for p in (tmp_path / "store").iterdir() if p.is_file()]
    assert kept == [artifacts[0].sha256]
    later = await store.device(transport, lambda: CREDS).app("F1")  # known: only hashed
    assert later.metadata == artifacts[0].metadata and len(pulled) == 6
    assert store.statistics().parsed == 1


async def test_a_changed_file_is_stored_again(tmp_path: Path) -> None:
    """The server's file changes content: the next agent keeps and parses the new content."""
    files = {"F1": (APKS / "basic-v1.apk").read_bytes()}
    transport, _ = serving(files)
    store = ArtifactStore(tmp_path / "store")
    first = await store.device(transport, lambda: CREDS).app("F1")
    files["F1"] = (APKS / "maxsdk.apk").read_bytes()
    second = await store.device(transport, lambda: CREDS).app("F1")
    assert (first.metadata.package_name, second.metadata.package_name) == (
        "com.example.basic",
        "com.example.maxsdk",
    )
    assert store.statistics().contents == 2


async def test_a_tampered_stream_is_refused(tmp_path: Path) -> None:
    """Bytes streamed into a sink that do not match the server's sha256: DownloadError."""

    async def handler(request: Request) -> Response:
        return Response(status=200, body=b"tampered", headers={"X-Checksum-SHA256": "0" * 64})

    with pytest.raises(DownloadError, match="sha256"):
        await fetch(MockTransport(handler), CREDS, "F1", HashingSink())
    store = ArtifactStore(tmp_path / "store")
    for _ in range(2):  # the first agent (a file) and a later one (a sink) alike
        with pytest.raises(DownloadError, match="sha256"):
            await store.device(MockTransport(handler), lambda: CREDS).app("F1")
    assert store.statistics().contents == 0


async def test_the_simulated_platform_never_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """install_app and apply_ota use the metadata they are given: no file, no parser."""

    def refuse(path: Path) -> None:
        raise AssertionError(f"parsed {path}")

    monkeypatch.setattr("midm_common.apk.read_apk_metadata", refuse)
    monkeypatch.setattr("midm_common.ota.read_ota_metadata", refuse)
    apk = apk_artifact(APKS / "basic-v1.apk")
    platform = SimulatedPlatform(HardwareInfo(serial_no="S1"), BuildInfo(fingerprint=FP1))
    await platform.install_app(
        ApkArtifact(sha256=apk.sha256, size=apk.size, metadata=apk.metadata), grant_all=True
    )
    assert platform.apps["com.example.basic"].version_code == 1
    assert platform.granted["com.example.basic"]


async def test_platforms_installing_from_a_file_name_a_hashed_only_artifact(
    tmp_path: Path,
) -> None:
    """A platform that needs the file refuses an artifact without one (a PlatformError)."""
    from agent.errors import PlatformError
    from agent.platforms.linux import LinuxPlatform

    package = tmp_path / "ota.zip"
    package.write_bytes(ota_zip({"ota-type": "AB", "post-build": FP2, "post-timestamp": "9"}))
    image = ota_artifact(package)
    platform = LinuxPlatform(state_dir=tmp_path / "state", apk_dir=tmp_path)
    hashed = OtaArtifact(sha256=image.sha256, size=image.size, metadata=image.metadata)
    with pytest.raises(PlatformError, match="only hashed"):
        await platform.apply_ota(hashed, ab_update=True)


# -- end to end: a fleet's agents against the server ------------------------------------------


class StreamingTransport(RecordingTransport):
    """The real transport, naming every download, into a file or a sink."""

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        self.names.append("download")
        return await super().download(path, headers, target, offset)

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        self.names.append("download")
        return await super().download_to(path, headers, sink)


def fleet_agent(server: Server, tmp_path: Path, serial: str, store: ArtifactStore) -> Agent:
    """A simulated device of a fleet: the harness's agent with the shared store and a transport
    that can stream."""
    harnessed, _ = make_agent(
        server.base,
        tmp_path / serial,
        serial=serial,
        clock=FakeClock(),
        platform=sim_platform(serial),
    )
    return Agent(
        config=harnessed.config,
        platform=harnessed.platform,
        transport=StreamingTransport(server.base, timeout_s=30.0),
        clock=harnessed.clock,
        state_store=harnessed.state_store,
        outbox=harnessed.outbox,
        rng=random.Random(7),
        artifacts=store,
    )


async def test_a_fleet_applies_an_app_and_an_image_parsing_each_once(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """Three simulated agents sharing a store install an app and an image: the server serves
    every download (3 per file), the store parses each content once, no agent keeps a file."""
    app = (await admin.upload_apk("basic-v1.apk")).data["fileUuid"]
    meta = {
        "ota-type": "AB",
        "pre-device": "sim",
        "post-build": FP2,
        "post-timestamp": "1800000000",
    }
    reply = await admin.upload("/ota/api/ota/upload", ota_zip(meta, payload=b"x" * 50), "fp2.zip")
    image = reply.data["fileUuid"]
    serials = ["S1", "S2", "S3"]
    saved = await admin.post(
        "/ota/api/profile/save",
        {
            "scope": {"device": serials},
            "apps": {"install": [{"uuid": app}]},
            "otas": [image],
            "profile": {"applyOrder": "apps"},
        },
    )
    assert saved.status == 200, saved.body
    store = ArtifactStore(tmp_path / "store")
    agents = [fleet_agent(server, tmp_path, s, store) for s in serials]
    await asyncio.gather(*(a.run_once() for a in agents))
    for agent in agents:
        platform = agent.platform
        assert isinstance(platform, SimulatedPlatform)
        assert platform.apps["com.example.basic"].version_code == 1
        assert (await platform.build()).fingerprint == FP2
        assert platform.staged_ota is not None and platform.staged_ota.path is None
        assert not (agent.config.state_dir / "downloads").exists()
    stats = store.statistics()
    assert (stats.parsed, stats.contents) == (2, 2)
    transports = [a.transport for a in agents]
    assert all(t.names.count("download") == 2 for t in transports)  # type: ignore[attr-defined]
    rows = server.sql("SELECT kind, status FROM events WHERE kind = 'profile'")
    assert [tuple(r) for r in rows] == [("profile", "applied")] * 3
    report = json.loads(server.sql("SELECT report FROM devices WHERE serial_no = 'S2'")[0][0])
    assert report["build"]["fingerprint"] == FP2


class DropsOnceAtHalf:
    """A transport serving one file with Range whose first download drops after half of it."""

    def __init__(self, body: bytes) -> None:
        self.body, self.starts, self.dropped = body, list[int](), False
        self.headers = {"X-Checksum-SHA256": hashlib.sha256(body).hexdigest()}

    def _part(self, start: int) -> bytes:
        self.starts.append(start)
        if self.dropped:
            return self.body[start:]
        self.dropped = True
        return self.body[start : len(self.body) // 2]

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        data = self._part(offset)
        with target.open("ab" if offset else "wb") as handle:
            handle.write(data)
        if len(data) + offset < len(self.body):
            raise TransportError("connection reset")
        return Download(status=206 if offset else 200, headers=self.headers)

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        start = sink.size
        data = self._part(start)
        sink.write(data)
        if len(data) + start < len(self.body):
            raise TransportError("connection reset")
        return Download(status=206 if start else 200, headers=self.headers)


async def test_a_dropped_download_is_resumed_by_the_same_device(tmp_path: Path) -> None:
    """Simulated devices resume a dropped download with Range, as a rig does: the first device
    (writing the store's file) and a later one (hashing into its sink) alike."""
    content = (APKS / "basic-v1.apk").read_bytes()
    half = len(content) // 2
    store = ArtifactStore(tmp_path / "store")
    for _ in range(2):  # the first device writes the store's copy, the second only hashes
        transport = DropsOnceAtHalf(content)
        device = store.device(transport, lambda: CREDS)  # type: ignore[arg-type]
        with pytest.raises(TransportError):
            await device.app("F1")
        artifact = await device.app("F1")
        assert transport.starts == [0, half]  # the second attempt asked for the rest only
        assert artifact.sha256 == hashlib.sha256(content).hexdigest()
        assert artifact.metadata.package_name == "com.example.basic"
    assert store.statistics().contents == 1
    assert not any((tmp_path / "store" / "incoming").glob("*"))  # no part file left behind


class HalfLink:
    """One device's link to a server holding `body` (with Range), as scenarios/download-resume
    .toml's truncate fault makes it: a download from the first byte ends at half; one from
    further on gets the rest. With `gate`, a download waits for it before its bytes come (a
    download in flight), and one from the first byte is not cut."""

    def __init__(self, body: bytes, gate: asyncio.Event | None = None) -> None:
        self.body, self.gate, self.starts = body, gate, list[int]()
        self.asked = asyncio.Event()  # a download began
        self.headers = {"X-Checksum-SHA256": hashlib.sha256(body).hexdigest()}

    async def _bytes(self, start: int) -> bytes:
        self.starts.append(start)
        self.asked.set()
        await asyncio.sleep(0)  # a round trip: the other devices run meanwhile
        if self.gate is not None:
            await self.gate.wait()
        end = len(self.body) // 2 if start == 0 and self.gate is None else len(self.body)
        return self.body[start:end]

    def _answer(self, start: int, got: int) -> Download:
        if start + got < len(self.body):
            raise TransportError("connection closed at half the file")
        return Download(status=206 if start else 200, headers=self.headers)

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        data = await self._bytes(offset)
        with target.open("ab" if offset else "wb") as handle:
            handle.write(data)
        return self._answer(offset, len(data))

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        start = sink.size
        data = await self._bytes(start)
        sink.write(data)
        return self._answer(start, len(data))


async def test_a_device_resumes_what_it_holds_whoever_else_is_writing(tmp_path: Path) -> None:
    """The field bug of download-resume.toml in miniature. W writes the store's file and H only
    hashes; both are cut at half. Meanwhile B starts writing (nobody else was). Their second
    attempts, H first: W resumes its part file beside B (two writers, each its own part
    file), H resumes its sink and takes the store's copy once W's is in; neither starts over,
    so neither is cut again. (A device that took the other mode threw its bytes away: with
    every download from the first byte cut, the fleet never converged.) B then finishes too:
    one copy, one parse, no part file left."""
    content = (APKS / "basic-v1.apk").read_bytes()
    half, sha = len(content) // 2, hashlib.sha256(content).hexdigest()
    store = ArtifactStore(tmp_path / "store")
    gate = asyncio.Event()
    links = {"W": HalfLink(content), "H": HalfLink(content), "B": HalfLink(content, gate)}
    devices = {n: store.device(link, lambda: CREDS) for n, link in links.items()}  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        first = await asyncio.gather(
            devices["W"].app("F1"), devices["H"].app("F1"), return_exceptions=True
        )
        assert all(isinstance(r, TransportError) for r in first)
        b = asyncio.create_task(devices["B"].app("F1"))
        await links["B"].asked.wait()
        assert links["B"].starts == [0] and not b.done()  # B writes, in flight
        second = await asyncio.gather(devices["H"].app("F1"), devices["W"].app("F1"))
        assert links["W"].starts == links["H"].starts == [0, half]
        assert {a.sha256 for a in second} == {sha} and not b.done()
        gate.set()
        assert (await b).sha256 == sha
    stats = store.statistics()
    assert (stats.contents, stats.parsed) == (1, 1)
    assert [p.name for p in (tmp_path / "store").iterdir() if p.is_file()] == [sha]
    assert not any((tmp_path / "store" / "incoming").iterdir())


async def test_a_hasher_left_without_a_writer_writes_the_file_and_keeps_its_part(
    tmp_path: Path,
) -> None:
    """W (writing) and H (hashing) are cut at half; W never comes back. H resumes its sink
    (the server sees the rest asked for), then, the store still lacking the content, downloads
    a file itself: cut at half in turn, it keeps that part and resumes it next time."""
    content = (APKS / "basic-v1.apk").read_bytes()
    half = len(content) // 2
    store = ArtifactStore(tmp_path / "store")
    w_link, h_link = HalfLink(content), HalfLink(content)
    w = store.device(w_link, lambda: CREDS)  # type: ignore[arg-type]
    h = store.device(h_link, lambda: CREDS)  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        first = await asyncio.gather(w.app("F1"), h.app("F1"), return_exceptions=True)
        assert all(isinstance(r, TransportError) for r in first)
        with pytest.raises(TransportError):
            await h.app("F1")
        artifact = await h.app("F1")
    assert h_link.starts == [0, half, 0, half]
    assert artifact.sha256 == hashlib.sha256(content).hexdigest()
    assert store.statistics().contents == 1
    assert len(list((tmp_path / "store" / "incoming").iterdir())) == 1  # W's, still held
