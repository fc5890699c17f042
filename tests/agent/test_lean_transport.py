"""The lean transport's pool over real loopback sockets, against a scripted raw HTTP server:
keep-alive reuse, pipelining in order, the connection limit, answers that close the connection
or end at EOF, lost and malformed answers as errors the observer classifies, stale idle
connections not reused, header injection refused, a closed pool refusing. (The contract every
transport meets is in test_transports.py and test_fleet_transport.py, run for this one too.)"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import ConfigError, TransportError
from agent.protocol import Request
from agent.transport.base import Exchange
from agent.transport.client import TlsOptions
from agent.transport.lean import LeanFleetTransports, LeanPool


@dataclass
class Script:
    """What the raw server saw, and the gate its /slow route waits on."""

    url: str = ""
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    slow: int = 0  # /slow requests held now
    two_held: asyncio.Event = field(default_factory=asyncio.Event)
    one_held: asyncio.Event = field(default_factory=asyncio.Event)


def answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


@pytest.fixture
async def raw_server() -> AsyncIterator[Script]:
    """/echo answers the path and body; /close answers with Connection: close and closes;
    /drop closes without answering; /garbage answers something that is not HTTP; /eof answers
    without a length and closes; /slow answers once `release` is set."""
    script = Script()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        script.open_now += 1
        script.most_open = max(script.most_open, script.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                path = head.split(b" ", 2)[1]
                script.requests.append(head + body)
                if path.startswith(b"/echo"):
                    writer.write(answer(path + b"|" + body, b"X-Seen: %d" % len(script.requests)))
                elif path == b"/close":
                    writer.write(answer(b"bye", b"Connection: close"))
                    await writer.drain()
                    return
                elif path == b"/drop":
                    return
                elif path == b"/garbage":
                    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
                elif path == b"/eof":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end")
                    await writer.drain()
                    return
                elif path == b"/slow":
                    script.slow += 1
                    script.one_held.set()
                    if script.slow == 2:
                        script.two_held.set()
                    await script.release.wait()
                    script.slow -= 1
                    writer.write(answer(b"slow"))
                await writer.drain()
        finally:
            script.open_now -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    script.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield script
        script.release.set()


def get(path: str, **headers: str) -> Request:
    return Request(method="GET", path=path, name=path.strip("/"), headers=headers)


async def test_sequential_requests_share_one_kept_alive_connection(raw_server: Script) -> None:
    """Five requests one after another go over one connection, each answered in full."""
    async with LeanFleetTransports(raw_server.url) as fleet:
        transport = fleet.transport()
        for i in range(5):
            response = await transport.send(get(f"/echo/{i}"))
            assert response.status == 200 and response.body == f"/echo/{i}|".encode()
            assert response.headers["X-Seen"] == str(i + 1)
        assert fleet.pool.connections == 1
    assert raw_server.connections == 1


async def test_pipelined_requests_are_answered_in_order_on_one_connection(
    raw_server: Script,
) -> None:
    """With one connection and 8 requests in flight on it, 40 concurrent requests each get their
    own answer (answers resolve the oldest waiter: they never cross)."""
    async with LeanFleetTransports(raw_server.url, limit=1, pipeline=8) as fleet:
        transport = fleet.transport()

        async def one(i: int) -> bytes:
            request = Request(method="POST", path=f"/echo/{i}", body={"i": i}, name="echo")
            return (await transport.send(request)).body

        bodies = await asyncio.gather(*(one(i) for i in range(40)))
    assert bodies == [f'/echo/{i}|{{"i":{i}}}'.encode() for i in range(40)]
    assert raw_server.connections == 1


async def test_connection_limit_queues_the_rest(raw_server: Script) -> None:
    """With limit=2 and no pipelining, six requests to a server that holds them open two
    connections at most; the others wait their turn and are all answered."""
    async with LeanFleetTransports(raw_server.url, limit=2) as fleet:
        transport = fleet.transport()
        tasks = [asyncio.create_task(transport.send(get("/slow"))) for _ in range(6)]
        async with asyncio.timeout(60):  # a safety bound, not a timing
            await raw_server.two_held.wait()  # both connections hold a request
        raw_server.release.set()
        answers = await asyncio.gather(*tasks)
    assert [a.body for a in answers] == [b"slow"] * 6
    assert raw_server.most_open == 2


async def test_a_request_queued_past_its_deadline_times_out(raw_server: Script) -> None:
    """A request waiting for a connection has no timer of its own: the pool's sweeper fails it
    once its deadline passed (here moved to the past, then one sweep), as a timeout; the held
    request is still answered."""
    async with LeanFleetTransports(raw_server.url, limit=1) as fleet:
        transport, pool = fleet.transport(), fleet.pool
        held = asyncio.create_task(transport.send(get("/slow")))
        async with asyncio.timeout(60):  # a safety bound, not a timing
            await raw_server.one_held.wait()  # the one connection is busy
        queued = asyncio.create_task(transport.send(get("/echo")))
        await asyncio.sleep(0)  # one turn: it is in the queue
        assert len(pool._queue) == 1
        waiter, _ = pool._queue[0]
        pool._queue[0] = (waiter, 0.0)
        pool._sweep()
        with pytest.raises(TransportError, match="no answer"):
            await queued
        raw_server.release.set()
        assert (await held).body == b"slow"


async def test_an_answer_that_closes_is_not_reused(raw_server: Script) -> None:
    """After `Connection: close` the next request opens a new connection; one that ends at EOF
    (no length) is read to the end."""
    async with LeanFleetTransports(raw_server.url) as fleet:
        transport = fleet.transport()
        assert (await transport.send(get("/close"))).body == b"bye"
        assert (await transport.send(get("/eof"))).body == b"to the end"
        assert (await transport.send(get("/echo"))).body == b"/echo|"
    assert raw_server.connections == 3


@pytest.mark.parametrize(
    ("path", "error"), [("/drop", "ServerDisconnectedError"), ("/garbage", "ClientPayloadError")]
)
async def test_lost_and_malformed_answers_fail_clearly(
    raw_server: Script, path: str, error: str
) -> None:
    """A connection closed before the answer, or an answer that is not HTTP, is a
    TransportError; the observer hears the error's name (as aiohttp's, so the simulator files
    it as a disconnect or an other error); the next request works on a new connection."""
    observed: list[Exchange] = []
    async with LeanFleetTransports(raw_server.url, observer=observed.append) as fleet:
        transport = fleet.transport()
        with pytest.raises(TransportError, match="cannot reach"):
            await transport.send(get(path))
        assert (await transport.send(get("/echo"))).status == 200
    assert [(e.status, e.error) for e in observed] == [(0, error), (200, None)]


async def test_stale_idle_connections_are_not_reused(raw_server: Script) -> None:
    """An idle connection older than keepalive_s (0 here: every one) is closed, not reused."""
    async with LeanFleetTransports(raw_server.url, keepalive_s=0) as fleet:
        transport = fleet.transport()
        for _ in range(3):
            assert (await transport.send(get("/echo"))).status == 200
    assert raw_server.connections == 3


async def test_header_injection_is_refused_before_anything_is_sent(raw_server: Script) -> None:
    """A header value with CR/LF (a token a hostile server handed out) is never sent."""
    async with LeanFleetTransports(raw_server.url) as fleet:
        with pytest.raises(TransportError, match="CR or LF"):
            await fleet.transport().send(get("/echo", Authorization="Device x\r\nX-Evil: 1"))
    assert raw_server.connections == 0 and raw_server.requests == []


async def test_a_closed_pool_refuses(raw_server: Script) -> None:
    """Requests after the fleet closed its pool fail as TransportError, not hang."""
    fleet = LeanFleetTransports(raw_server.url)
    transport = fleet.transport()
    assert (await transport.send(get("/echo"))).status == 200
    await fleet.close()
    with pytest.raises(TransportError, match="closed"):
        await transport.send(get("/echo"))


def test_bad_settings_are_config_errors() -> None:
    """Not http(s), or a limit or pipeline below 1: ConfigError naming the problem."""
    with pytest.raises(ConfigError, match="http"):
        LeanPool("ftp://127.0.0.1/")
    with pytest.raises(ConfigError, match="limit"):
        LeanPool("http://127.0.0.1/", limit=0)


async def test_request_bytes_carry_prefix_query_and_length(raw_server: Script) -> None:
    """A base URL's path prefix and the query go into the request line; a body has its length."""
    async with LeanFleetTransports(raw_server.url + "/echo/base/") as fleet:
        request = Request(method="PUT", path="/x", params={"a": "1 2"}, body=[1], name="x")
        response = await fleet.transport().send(request)
    assert response.body == b"/echo/base/x?a=1+2|[1]"
    head = raw_server.requests[0].split(b"\r\n")
    assert head[0] == b"PUT /echo/base/x?a=1+2 HTTP/1.1"
    assert b"Content-Length: 3" in head and b"Content-Type: application/json" in head


async def test_an_agents_transport_is_a_few_pointers() -> None:
    """Like the aiohttp fleet's: no __dict__, a few slots, the fleet's pool shared."""
    async with LeanFleetTransports("http://127.0.0.1:1/") as fleet:
        one, two = fleet.transport(), fleet.transport()
        assert not hasattr(one, "__dict__") and sys.getsizeof(one) <= 64
        assert one.fleet is two.fleet and one.base_url == "http://127.0.0.1:1"
        await one.close()  # nothing of its own to close
        assert fleet.pool.connections == 0


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files), signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_server_against_the_ca_bundle(tmp_path: Path) -> None:
    """Over TLS the pool checks the server's certificate: trusted through --ca-bundle it is
    answered; with the system's CAs only the handshake fails as a TransportError."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"secure"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        async with LeanFleetTransports(url, tls=TlsOptions(ca_bundle=cert)) as fleet:
            assert (await fleet.transport().send(get("/x"))).body == b"secure"
        async with LeanFleetTransports(url) as fleet:
            with pytest.raises(TransportError, match="cannot reach"):
                await fleet.transport().send(get("/x"))
