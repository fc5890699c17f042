"""Issue 12, items 5 and 8 (headers): connections and raw bytes.

A server served as the CLI serves it (server.listener: ConnectionGuard, GuardedHandler) on
127.0.0.1:0, spoken to over raw sockets where a client library would refuse to send the input:
half-sent heads are closed after the head timeout, connections over the cap are closed at once
with one log line, aiohttp's own 400s are the envelope without the input, raw bytes in
credentials are 40100. A device keeps one push channel: a new one replaces the old (4409).

No test sleeps or measures time: each waits for an event (EOF, a close frame, a hook called),
with a generous safety timeout.
"""

from __future__ import annotations

import asyncio
import errno
import json
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from server.clock import FixedClock
from server.config import ServerConfig
from server.context import SERVICES, Services
from server.limits import MAX_HEADER_FIELD, MAX_HEADERS, MAX_REQUEST_LINE
from server.listener import (
    ConnectionGuard,
    ConnectionLimits,
    GuardedHandler,
    open_files_cap,
)
from server.services.hub import REPLACED
from tests.helpers import ENVELOPE_KEYS, Client, Server, seed_sites
from tests.server.test_agent_api import CHECKIN, enroll
from tests.server.test_cli import assert_one_line_error, run_cli
from tests.server.test_push import next_message, ping, push_channel

SAFETY_S = 60.0  # a hung test fails after this long; no test expects to come near it
MARK = b"XYZZY"  # put in hostile input; must never come back in an answer


@dataclass
class GuardedServer(Server):
    """tests.helpers.Server with small connection limits, its port and its guard at hand."""

    limits: ConnectionLimits | None = field(
        default_factory=lambda: ConnectionLimits(
            max_connections=100, header_timeout_s=30.0, keepalive_s=75.0
        )
    )

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    @property
    def guard(self) -> ConnectionGuard:
        assert self.listener is not None
        return self.listener.guard


StartGuarded = Callable[..., Awaitable[GuardedServer]]


@pytest.fixture
async def guarded_factory(
    make_config: Callable[..., ServerConfig], clock: FixedClock, parser_pool: Executor
) -> AsyncIterator[StartGuarded]:
    started: list[GuardedServer] = []

    async def start(*, body_idle_s: float | None = None, **limits: Any) -> GuardedServer:
        config = make_config() if body_idle_s is None else make_config(body_idle_s=body_idle_s)
        options = {"max_connections": 100, "header_timeout_s": 30.0, "keepalive_s": 75.0}
        server = GuardedServer(
            config=config,
            clock=clock,
            parser_pool=parser_pool,
            limits=ConnectionLimits(**(options | limits)),
        )
        server.sites = seed_sites(config, clock, ["alpha", "beta"])
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def guarded(guarded_factory: StartGuarded) -> GuardedServer:
    return await guarded_factory()


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def envelope(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        assert set(parsed) >= ENVELOPE_KEYS, parsed
        return parsed


def parse_reply(raw: bytes) -> RawReply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawReply(status, headers, body[: int(headers.get("content-length", len(body)))])


async def connect(server: GuardedServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as a close)."""
    chunks = []
    async with asyncio.timeout(SAFETY_S):
        try:
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


async def exchange(server: GuardedServer, request: bytes) -> tuple[RawReply, bytes]:
    """Send `request` on a new connection; the answer, and what followed it before the close."""
    reader, writer = await connect(server)
    try:
        writer.write(request)
        raw = await read_to_eof(reader)
    finally:
        writer.close()
    reply = parse_reply(raw)
    return reply, raw


async def keep_alive_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/nope"
) -> RawReply:
    """One complete request on a kept-alive connection, and its whole answer."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    async with asyncio.timeout(SAFETY_S):
        head = await reader.readuntil(b"\r\n\r\n")
        reply = parse_reply(head)
        body = await reader.readexactly(int(reply.headers["content-length"]))
    return RawReply(reply.status, reply.headers, body)


def services(server: Server) -> Services:
    assert server.app is not None
    return server.app[SERVICES]


# -- raw bytes in credentials (item 8) -----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        b"X-API-Key: \xff\xfeXYZZY\r\n",
        b"X-API-Key: key-alpha\r\nAuthorization: Bearer \xffXYZZY\r\n",
        b"X-API-Key: key-alpha\r\nAuthorization: Device \xff\xc0XYZZY\r\n",
        b"X-API-Key: key-alpha\r\nAuthorization: \xff\xff \xffXYZZY\r\n",
    ],
    ids=["key", "bearer", "device", "scheme"],
)
async def test_raw_bytes_in_credentials_are_40100(guarded: GuardedServer, headers: bytes) -> None:
    """Bytes that are not UTF-8 in X-API-Key or Authorization are an unknown credential
    (401 40100, the input not echoed), never a 500; a check-in sent so writes nothing."""
    before = guarded.sql("SELECT COUNT(*) AS n FROM devices WHERE last_checked_in IS NOT NULL")
    body = json.dumps(CHECKIN).encode()
    end = b"Connection: close\r\n\r\n"
    for request in (
        b"GET /ota/api/device/group/all HTTP/1.1\r\nHost: t\r\n" + headers + end,
        b"POST /ota/api/agent/checkin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + headers
        + end
        + body,
    ):
        reply, raw = await exchange(guarded, request)
        assert (reply.status, reply.envelope["code"]) == (401, 40100), raw
        assert MARK not in raw
    after = guarded.sql("SELECT COUNT(*) AS n FROM devices WHERE last_checked_in IS NOT NULL")
    assert before[0]["n"] == after[0]["n"] == 0


# -- aiohttp's own 400s (item 8) -----------------------------------------------------------------

LONG = b"a" * (MAX_HEADER_FIELD + 10)


@pytest.mark.parametrize(
    ("request_bytes", "needle"),
    [
        (b"GE<XYZZY> / HTTP/1.1\r\nHost: t\r\n\r\n", "valid HTTP method"),
        (b"XYZZY\r\n\r\n", "valid HTTP method"),
        (b"GET /XYZZY HTTP/9.9x\r\nHost: t\r\n\r\n", "request line is malformed"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad XYZZY: v\r\n\r\n", "not valid HTTP/1.1"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: XYZZY" + LONG + b"\r\n\r\n", "over its limit"),
        (b"GET /XYZZY" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.1\r\n\r\n", "over its limit"),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\n"
            + b"".join(b"X-%d: XYZZY\r\n" % i for i in range(MAX_HEADERS + 1))
            + b"\r\n",
            f"more than {MAX_HEADERS} headers",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: XYZZY\r\n\r\n",
            "not valid HTTP/1.1",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nXYZZY\r\n",
            "framing",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", "not valid HTTP/1.1"),  # no Host
    ],
    ids=[
        "method",
        "garbage",
        "version",
        "header-token",
        "long-header",
        "long-line",
        "too-many-headers",
        "content-length",
        "chunk",
        "no-host",
    ],
)
async def test_malformed_requests_are_the_envelope_without_the_input(
    guarded: GuardedServer, request_bytes: bytes, needle: str
) -> None:
    """What aiohttp cannot parse is answered 400 40000 as JSON, saying what was wrong in our
    words (never echoing the request), and the connection is closed."""
    reply, raw = await exchange(guarded, request_bytes)
    assert reply.status == 400, raw
    assert reply.headers["content-type"].startswith("application/json")
    envelope = reply.envelope
    assert envelope["code"] == 40000 and envelope["result"] is False
    assert needle in envelope["message"]
    assert MARK not in raw
    assert guarded.guard.statistics().bad_requests == 1


async def test_bad_requests_are_logged_one_line_per_interval(guarded: GuardedServer) -> None:
    """A stream of malformed requests writes one `http.bad_request` line (no traceback), not
    one per request."""
    with capture_logs() as logs:
        for _ in range(5):
            reply, _ = await exchange(guarded, b"XYZZY\r\n\r\n")
            assert reply.status == 400
    lines = [e for e in logs if e["event"] == "http.bad_request"]
    assert len(lines) == 1 and "exc_info" not in lines[0] and lines[0]["suppressed"] == 0
    assert not [e for e in logs if e.get("log_level") in ("error", "critical")]


# -- head timeout and keep-alive -----------------------------------------------------------------


async def test_half_sent_heads_are_closed_after_the_header_timeout(
    guarded_factory: StartGuarded,
) -> None:
    """A connection that sends half a head, or nothing, is closed when the head timeout runs
    out; so is a kept-alive one that starts a second head and stalls; meanwhile a normal request
    is answered."""
    server = await guarded_factory(header_timeout_s=0.2)
    silent = await connect(server)
    half = await connect(server)
    half[1].write(b"GET /ota/api/device/group/all HTTP/1.1\r\nHost: t\r\nX-API-K")
    kept = await connect(server)
    assert (await keep_alive_request(*kept)).status == 404
    kept[1].write(b"GET /nope HTTP/1.1\r\nHo")
    normal, _ = await exchange(
        server, b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert (normal.status, normal.envelope["code"]) == (404, 40400)
    for reader, writer in (silent, half, kept):
        assert await read_to_eof(reader) == b""  # closed without an answer
        writer.close()
    assert server.guard.statistics().head_timeouts == 3


async def test_a_body_that_stops_coming_is_refused_and_nothing_is_written(
    guarded_factory: StartGuarded,
) -> None:
    """A device/save whose body stops half-way, and an upload whose file stops half-way, are
    answered 40000 naming the wait once no byte came for body_idle_s, and closed; no device is
    saved, no file is kept; meanwhile another request is answered."""
    server = await guarded_factory(body_idle_s=0.2)
    alpha = server.sites["alpha"]
    async with aiohttp.ClientSession() as http:
        admin = Client(http, server.base, alpha.key)
        await admin.login(alpha.email, alpha.password)
    auth = f"X-API-Key: {alpha.key}\r\nAuthorization: Bearer {admin.token}\r\n".encode()
    body = json.dumps([{"hardware_info": {"serial_no": "STALL-1"}}]).encode()
    save = await connect(server)
    save[1].write(
        b"POST /ota/api/device/save HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + auth
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    form = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.apk"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + b"PK" * 5000
    )
    upload = await connect(server)
    upload[1].write(
        b"POST /ota/api/app/upload HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        + auth
        + f"Content-Length: {len(form) + 1000}\r\n\r\n".encode()
        + form
    )
    normal, _ = await exchange(
        server, b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert (normal.status, normal.envelope["code"]) == (404, 40400)
    for reader, writer in (save, upload):
        reply = parse_reply(await read_to_eof(reader))
        writer.close()
        assert (reply.status, reply.envelope["code"]) == (400, 40000)
        assert "no byte of it arrived for 0.2 s" in reply.envelope["message"]
    assert server.sql("SELECT serial_no FROM devices") == []
    assert server.files_on_disk() == []


@pytest.mark.parametrize(
    "pieces",
    [
        [
            b"GET /ota/api/device/group/all HTTP/1.1\r\nHost: t\r\nX-API-Key: key-alpha\r\n"
            b"Connection: close\r\n\r\n"
        ],
        [
            b"GET /ota/api/device/group/all HTTP/1.1\r\nHost: t\r\nX-API-Key: key-alpha\r\n"
            b"Connection: close\r\n\r",
            b"\n",
        ],  # the blank line split across reads
    ],
    ids=["whole", "split"],
)
async def test_a_request_in_the_app_is_not_cut_by_the_head_timer(
    guarded: GuardedServer, monkeypatch: pytest.MonkeyPatch, pieces: list[bytes]
) -> None:
    """Once the head is complete the head timer no longer applies: a request held in its
    handler when the timer fires (fired here by hand, as a late timer would) is answered."""
    entered, release = asyncio.Event(), asyncio.Event()
    auth = services(guarded).auth
    load = auth.site_for_key

    async def slow_site_for_key(key: str | None) -> Any:
        entered.set()
        await release.wait()
        return await load(key)

    monkeypatch.setattr(auth, "site_for_key", slow_site_for_key)
    received: asyncio.Queue[bytes] = asyncio.Queue()
    data_received = GuardedHandler.data_received

    def recording(handler: GuardedHandler, data: bytes) -> None:
        data_received(handler, data)
        received.put_nowait(data)

    monkeypatch.setattr(GuardedHandler, "data_received", recording)
    async with asyncio.timeout(SAFETY_S):
        reader, writer = await connect(guarded)
        try:
            for piece in pieces:
                writer.write(piece)
                got = b""
                while got != piece:  # the server read this piece before the next is sent
                    got += await received.get()
            await entered.wait()
            connections = guarded.guard.server.connections
            handlers = [h for h in connections if isinstance(h, GuardedHandler)]
            assert len(handlers) == 1
            handlers[0]._head_late()  # the head timer fires now, during the handler
            release.set()
            raw = await read_to_eof(reader)
        finally:
            writer.close()
    reply = parse_reply(raw)
    assert (reply.status, reply.envelope["code"]) == (401, 40100)  # an answer, not a cut
    assert guarded.guard.statistics().head_timeouts == 0


# -- connection cap ------------------------------------------------------------------------------


async def test_connections_over_the_cap_are_closed_at_once_with_one_log_line(
    guarded_factory: StartGuarded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cap reached a new connection is closed without an answer, and one
    `server.connections_full` line is written however many are refused; once a connection
    closes, a new one is served."""
    server = await guarded_factory(max_connections=3)
    held = [await connect(server) for _ in range(3)]
    for reader, writer in held:
        assert (await keep_alive_request(reader, writer)).status == 404  # counted by now
    with capture_logs() as logs:
        for _ in range(3):
            reader, writer = await connect(server)
            writer.write(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await read_to_eof(reader) == b""
            writer.close()
    full = [e for e in logs if e["event"] == "server.connections_full"]
    assert len(full) == 1 and full[0]["max_connections"] == 3
    assert server.guard.statistics().refused == 3

    closed = asyncio.Event()
    record = server.guard.closed

    def closed_hook() -> None:
        record()
        closed.set()

    monkeypatch.setattr(server.guard, "closed", closed_hook)
    reader, writer = held.pop()
    writer.write(b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    await read_to_eof(reader)
    writer.close()
    async with asyncio.timeout(SAFETY_S):
        await closed.wait()
    reply, _ = await exchange(server, b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert reply.status == 404
    for _, writer in held:
        writer.close()


@pytest.mark.parametrize(
    ("soft", "hard", "wanted", "raised_to", "cap"),
    [
        (1024, 65536, 25_000, 25_256, 25_000),  # raised as far as needed: the cap is the wish
        (1024, 4096, 25_000, 4096, 3840),  # raised to the hard limit; the reserve kept below
        (256, 256, 25_000, None, 192),  # a tiny limit: a quarter of it is kept in reserve
        (100_000, 100_000, 500, None, 500),
    ],
)
def test_the_cap_stays_below_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch,
    soft: int,
    hard: int,
    wanted: int,
    raised_to: int | None,
    cap: int,
) -> None:
    """open_files_cap raises the soft limit toward the hard one as far as the cap needs, and
    keeps FD_RESERVE descriptors (or a quarter of a small limit) out of the cap."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert open_files_cap(wanted) == cap
    assert calls == ([] if raised_to is None else [(raised_to, hard)])


def test_a_bad_trusted_proxy_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """--trusted-proxy that is not an address or network: exit 2, one line, no files."""
    result = run_cli("--db", str(tmp_path / "db.sqlite"), "--port", "0", "--trusted-proxy", "x")
    assert_one_line_error(result, "--trusted-proxy: 'x' is not an IP address or network")
    assert list(tmp_path.iterdir()) == []


class FakeLoop:
    def __init__(self) -> None:
        self.passed_on: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.passed_on.append(context)


async def test_accept_failures_are_one_line_per_interval_without_traceback() -> None:
    """accept() out of descriptors, as asyncio reports it (once per pending connection, each
    retry), is one `server.accept_failed` line per interval carrying the count it stands for;
    other loop errors go on to the default handler."""
    now = [100.0]

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    limits = ConnectionLimits(max_connections=10, header_timeout_s=1.0, keepalive_s=1.0)
    guard = ConnectionGuard(web.Server(handler), limits, now=lambda: now[0])
    loop = FakeLoop()
    emfile = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(errno.EMFILE, "Too many open files"),
        "socket": object(),
    }
    with capture_logs() as logs:
        for _ in range(128):
            guard.exception_handler(loop, emfile)  # type: ignore[arg-type]
        now[0] += limits.log_every_s
        guard.exception_handler(loop, emfile)  # type: ignore[arg-type]
        other = {"message": "something else", "exception": OSError(errno.EMFILE, "x")}
        guard.exception_handler(loop, other)  # type: ignore[arg-type]
    lines = [e for e in logs if e["event"] == "server.accept_failed"]
    assert [(e["error"], e["suppressed"]) for e in lines] == [("EMFILE", 0), ("EMFILE", 127)]
    assert all("exc_info" not in e for e in lines)
    assert loop.passed_on == [other]


# -- one push channel a device (item 5) ----------------------------------------------------------


async def test_a_new_push_channel_replaces_the_old_one(
    server: Server, admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device opening channel after channel holds one: each older one is closed with 4409
    and a reason, the newest answers pings and gets pushes, the device stays connected
    throughout (no disconnect recorded), and closing the last one disconnects it."""
    context = services(server)
    hub, checkins = context.hub, context.checkins
    channel_calls: list[bool] = []
    record = checkins.channel
    removed: asyncio.Queue[bool] = asyncio.Queue()
    forget = hub.remove

    def channel(device_uuid: str, connected: bool) -> None:
        channel_calls.append(connected)
        record(device_uuid, connected)

    def remove(device_uuid: str, socket: web.WebSocketResponse) -> bool:
        was_current = forget(device_uuid, socket)
        removed.put_nowait(was_current)
        return was_current

    monkeypatch.setattr(checkins, "channel", channel)
    monkeypatch.setattr(hub, "remove", remove)
    device = await enroll(admin, "D1")
    url = f"{device.base}/ota/api/agent/ws"
    async with asyncio.timeout(SAFETY_S), push_channel(device) as first:
        older = first
        opened = []
        for _ in range(4):
            newer = await device.http.ws_connect(url, headers=device.headers())
            opened.append(newer)
            closing = await older.receive()
            assert closing.type == aiohttp.WSMsgType.CLOSE, closing
            assert closing.data == REPLACED
            assert "replaced by a newer push channel" in str(closing.extra)
            assert await removed.get() is False  # the old one was no longer the channel
            await ping(newer)
            older = newer
        assert hub.statistics().connections == 1 and hub.statistics().devices == 1
        found = (await admin.get("/ota/api/device/findBy", serialNo="D1")).data
        assert found["states"]["rtcEnabled"] is True
        assert await hub.send([found["uuid"]], {"type": "wake"}) == 1
        assert await next_message(older) == {"type": "wake"}
        await older.close()
        assert await removed.get() is True
        for ws in opened:
            await ws.close()
    assert channel_calls == [True, False]
    assert hub.statistics().connections == 0


async def test_a_peer_that_ignores_the_close_is_dropped(
    server: Server, admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old channel whose client never answers the close handshake (it does not read) is
    dropped once PUSH_REPLACED_CLOSE_S (shortened here) has run out, and the new channel
    answers pings meanwhile or after."""
    monkeypatch.setattr("server.services.hub.PUSH_REPLACED_CLOSE_S", 0.05)
    device = await enroll(admin, "D1")
    url = f"{device.base}/ota/api/agent/ws"
    async with asyncio.timeout(SAFETY_S):
        deaf = await device.http.ws_connect(url, headers=device.headers())
        await ping(deaf)  # registered; from now on nobody reads it
        newer = await device.http.ws_connect(url, headers=device.headers())
        await ping(newer)
        assert services(server).hub.statistics().devices == 1
        await newer.close()
        await deaf.close()
