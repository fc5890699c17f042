"""One conformance check for every Transport (aiohttp and the lean pool over loopback,
MockTransport): the same requests, bytes and push messages; exchanges timed on the agent's clock;
TLS options that cannot work are refused clearly."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent import protocol
from agent.clock import FakeClock
from agent.errors import ConfigError, PushClosed, TransportError
from agent.protocol import Request, Response
from agent.transport.base import Exchange, Transport
from agent.transport.client import AiohttpTransport, TlsOptions
from agent.transport.lean import LeanFleetTransports, LeanTransport
from agent.transport.mock import MockTransport

FILE = b"0123456789"
OpenTransport = Callable[..., AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def aiohttp_transport(url: str, **options: Any) -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(url, **options) as transport:
        yield transport


@asynccontextmanager
async def lean_transport(url: str, **options: Any) -> AsyncIterator[LeanTransport]:
    async with LeanFleetTransports(url, **options) as fleet:
        yield fleet.transport()


# every real transport, and the name its observer gives a refused connection
REAL = pytest.mark.parametrize(
    ("open_transport", "refused"),
    [(aiohttp_transport, "ClientConnectorError"), (lean_transport, "ConnectionRefusedError")],
    ids=["aiohttp", "lean"],
)
PUSHED = ["not json", "[1]", '{"type": "sync"}', "", '{"type": "wake"}']


async def echo_logic(
    method: str, path: str, body: bytes, query: Mapping[str, str], headers: Mapping[str, str]
) -> Response:
    payload = {
        "method": method,
        "path": path,
        "body": json.loads(body) if body else None,
        "bytes": body.decode(),
        "type": headers.get("Content-Type"),
        "query": dict(query),
    }
    return Response(status=201, body=json.dumps(payload).encode(), headers={"X-Echo": "1"})


def file_logic(path: str, headers: Mapping[str, str]) -> Response:
    """/file honours `Range: bytes=N-` (206); /whole always sends the whole file (200)."""
    ranged = headers.get("Range", "")
    if path == "/file" and ranged.startswith("bytes="):
        return Response(status=206, body=FILE[int(ranged[6:].rstrip("-")) :])
    return Response(status=200, body=FILE, headers={"X-Checksum-SHA256": "c"})


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        answer = await echo_logic(
            request.method, request.path, await request.read(), request.query, request.headers
        )
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def push(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for text in PUSHED:
            await ws.send_str(text)
        await ws.close()
        return ws

    async def file(request: web.Request) -> web.Response:
        answer = file_logic(request.path, request.headers)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    app = web.Application()
    app.router.add_get("/push", push)
    app.router.add_get("/file", file)
    app.router.add_get("/whole", file)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def conformance(transport: Transport) -> None:
    request = Request(
        method="POST",
        path="/ota/api/agent/events",
        body=[{"id": "x", "n": "é"}],
        params={"a": "1"},
        name="events",
    )
    response = await transport.send(request)
    assert response.status == 201 and response.headers.get("X-Echo") == "1"
    assert json.loads(response.body) == {
        "method": "POST",
        "path": "/ota/api/agent/events",
        "body": [{"id": "x", "n": "é"}],
        "bytes": '[{"id":"x","n":"é"}]',  # UTF-8 on the wire (midm_common.wirejson)
        "type": "application/json",
        "query": {"a": "1"},
    }
    bare = await transport.send(Request(method="GET", path="/x", name="bare"))
    assert json.loads(bare.body)["bytes"] == "" and json.loads(bare.body)["type"] is None


async def push_conformance(transport: Transport) -> None:
    """Only JSON objects come out of a push channel; its end raises PushClosed."""
    received = []
    async with transport.open_push("/push", {}) as channel:
        with pytest.raises(PushClosed):
            async for message in channel.messages():
                received.append(message)
    assert received == [{"type": "sync"}, {"type": "wake"}]


DOWNLOADS = [("download", status) for status in (200, 206, 200, 200, 206, 200)]


class ListSink:
    def __init__(self, held: bytes = b"") -> None:
        self.chunks = [held] if held else []

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def truncate(self) -> None:
        self.chunks.clear()


async def download_conformance(transport: Transport, folder: Path) -> None:
    """Into a file or a sink: from the start, the rest of what is held (206 appends), or the
    whole again when the server ignores the Range (200 starts over)."""
    target = folder / "f"
    first = await transport.download("/file", {"A": "1"}, target, 0)
    assert first.status == 200 and first.headers.get("X-Checksum-SHA256") == "c"
    assert target.read_bytes() == FILE
    target.write_bytes(FILE[:4])
    assert (await transport.download("/file", {}, target, 4)).status == 206
    assert target.read_bytes() == FILE
    target.write_bytes(b"junk")
    assert (await transport.download("/whole", {}, target, 4)).status == 200
    assert target.read_bytes() == FILE
    for path, held, status in [
        ("/file", b"", 200),
        ("/file", FILE[:3], 206),
        ("/whole", b"xy", 200),
    ]:
        sink = ListSink(held)
        assert (await transport.download_to(path, {}, sink)).status == status
        assert b"".join(sink.chunks) == FILE


@REAL
async def test_real_transport_conforms(
    echo_server: str, tmp_path: Path, open_transport: OpenTransport, refused: str
) -> None:
    """A real transport sends method, path, query, the protocol's JSON bytes and Content-Type,
    returns the answer, and yields the push channel's JSON objects."""
    observed: list[Exchange] = []
    async with open_transport(echo_server, observer=observed.append) as transport:
        await conformance(transport)
        await push_conformance(transport)
        await download_conformance(transport, tmp_path)
    assert [(e.name, e.status) for e in observed][:3] == [
        ("events", 201),
        ("bare", 201),
        ("push", 101),
    ]
    assert [(e.name, e.status) for e in observed][3:] == DOWNLOADS


async def test_mock_transport_conforms(tmp_path: Path) -> None:
    """MockTransport runs the same encoder: its handler sees the bytes a socket would carry."""

    async def handler(request: Request) -> Response:
        sent = transport.sent[-1]
        if request.name == "download":
            assert sent.body is None
            return file_logic(request.path, request.headers)
        assert sent.request is request
        return await echo_logic(
            request.method, request.path, sent.body or b"", request.params, sent.headers
        )

    observed: list[Exchange] = []
    transport = MockTransport(handler, observer=observed.append)
    for text in PUSHED:
        transport.push.send_raw(text)
    transport.push.close()
    await conformance(transport)
    await push_conformance(transport)
    await download_conformance(transport, tmp_path)
    assert [s.request.name for s in transport.sent][:2] == ["events", "bare"]
    assert [(e.name, e.status) for e in observed] == [
        ("events", 201),
        ("bare", 201),
        ("push", 101),
        *DOWNLOADS,
    ]


def test_protocol_encodes_and_decodes() -> None:
    """Bodies are compact JSON (None without a body); push data is a JSON object or nothing."""
    assert protocol.encode_body(Request(method="GET", path="/")) is None
    with_body = Request(method="POST", path="/", body={"a": [1, None]}, headers={"X": "1"})
    body = protocol.encode_body(with_body)
    assert body == b'{"a":[1,null]}'
    assert protocol.wire_headers(with_body, body) == {"X": "1", "Content-Type": "application/json"}
    assert protocol.wire_headers(with_body, None) == {"X": "1"}
    assert protocol.decode_push('{"type": "sync"}') == {"type": "sync"}
    for junk in ("", "nope", "[1]", "3", b"\xff", "null"):
        assert protocol.decode_push(junk) is None


# -- timing on the agent's clock -------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    clock = FakeClock()
    clock.advance(10)
    return clock


@pytest.fixture
async def timed_server(clock: FakeClock) -> AsyncIterator[str]:
    """Each route moves the fake clock while the request is in flight, then answers (or not)."""
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        clock.advance(0.25)
        return web.Response(status=200, body=b"{}")

    async def fail(request: web.Request) -> web.Response:
        clock.advance(0.5)
        return web.Response(status=500, body=b"oops")

    async def hang(request: web.Request) -> web.Response:
        clock.advance(1.0)
        await release.wait()  # never answers before the client gives up
        return web.Response(status=200)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/fail", fail)
    app.router.add_get("/hang", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    release.set()
    await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@REAL
async def test_observer_hears_intended_start_and_duration(
    timed_server: str, clock: FakeClock, open_transport: OpenTransport, refused: str
) -> None:
    """On the agent's clock: a success, an HTTP error, a timeout and a refused connection each
    reach the observer with the intended time (the request's, else the start), the start, the
    duration, the status and the error. The timeout is the one real wait (0.2 s)."""
    observed: list[Exchange] = []
    async with open_transport(
        timed_server, timeout_s=0.2, clock=clock, observer=observed.append
    ) as transport:
        ok = await transport.send(Request(method="GET", path="/ok", name="ok", intended=8.0))
        assert ok.status == 200
        assert (await transport.send(Request(method="GET", path="/fail"))).status == 500
        with pytest.raises(TransportError, match="no answer"):
            await transport.send(Request(method="GET", path="/hang", name="hang"))
    async with open_transport(
        f"http://127.0.0.1:{closed_port()}", clock=clock, observer=observed.append
    ) as closed:
        with pytest.raises(TransportError, match="cannot reach"):
            await closed.send(Request(method="POST", path="/x", name="refused", body={}))
    assert observed == [
        Exchange(name="ok", intended=8.0, started=10.0, duration=0.25, status=200, error=None),
        Exchange(name="/fail", intended=10.25, started=10.25, duration=0.5, status=500, error=None),
        Exchange(
            name="hang", intended=10.75, started=10.75, duration=1.0, status=0, error="timeout"
        ),
        Exchange(
            name="refused",
            intended=11.75,
            started=11.75,
            duration=0.0,
            status=0,
            error=refused,
        ),
    ]
    assert observed[0].lateness == 2.0


async def test_mock_transport_times_exchanges_on_the_clock(clock: FakeClock) -> None:
    """MockTransport reports to the observer as the real one does; a handler's TransportError
    is a failed exchange with no status."""

    async def handler(request: Request) -> Response:
        clock.advance(0.5)
        if request.name == "down":
            raise TransportError("down: cannot reach the mock")
        return Response(status=503, body=b"{}")

    observed: list[Exchange] = []
    transport = MockTransport(handler, clock=clock, observer=observed.append)
    assert (await transport.send(Request(method="GET", path="/a", name="a", intended=9))).status
    with pytest.raises(TransportError):
        await transport.send(Request(method="GET", path="/b", name="down"))
    assert observed == [
        Exchange(name="a", intended=9, started=10.0, duration=0.5, status=503, error=None),
        Exchange(
            name="down",
            intended=10.5,
            started=10.5,
            duration=0.5,
            status=0,
            error="TransportError",
        ),
    ]


def test_tls_options(tmp_path: Path) -> None:
    """Verification is on by default, off with --insecure; a bad CA file is a ConfigError."""
    assert TlsOptions().context() is True
    assert TlsOptions(verify=False).context() is False
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS options"):
        TlsOptions(ca_bundle=bad).context()
