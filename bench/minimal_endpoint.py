"""The shared minimal endpoint: answers the agent's device calls with fixed valid envelopes, fast.

    python -m bench.minimal_endpoint [--port 0] [--interval 60]

One process, one thread, uvloop when installed, an asyncio Protocol per connection with the
httptools parser (llhttp, C): keep-alive and pipelining (every answer a read produced goes out
in one write). It prints one JSON line `{"event": "endpoint.listening", "url": ...}` on stdout
once it listens, and runs until SIGTERM or SIGINT. Loopback only (127.0.0.1).

Answers, precomputed bytes, the same whatever the body (the bodies are not parsed: this is the
server a load generator is measured against, so its cost per request is as small as it can be):
`POST .../agent/register` {deviceUuid, token}; `POST .../agent/checkin` {nextCheckinSeconds:
--interval, inventoryWanted: false, profiles: []}; `PUT .../agent/apps`, `POST .../agent/events`
data null; `GET .../agent/profiles` []; anything else the 40400 envelope. `GET
.../agent/ws` with the WebSocket upgrade: 101, then the channel is held (pings answered with
pongs, a close with a close, anything else ignored; nothing is ever pushed): what a device's
push channel costs a generator, without a server's work. `GET /_bench/count` answers the
requests answered so far (itself not counted), so that a bench reads one rate for every
generator it compares, at the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Self, cast
from urllib.parse import urlsplit

try:
    import httptools
except ImportError:  # the bench scripts say "skipped" before starting this one
    httptools = None  # type: ignore[assignment]

COUNT_PATH = b"/_bench/count"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
CHECKIN = b"/ota/api/agent/checkin"
TOKEN = "bench-token"  # noqa: S105 - the fixed token of a throwaway endpoint


def envelope(data: Any, *, code: int = 0, status: int = 200, message: str = "ok") -> bytes:
    """A whole HTTP/1.1 answer carrying the MiDM envelope."""
    body: dict[str, Any] = {
        "uq": "00000000-0000-4000-8000-000000000000",
        "doc_version": "latest",
        "result": code == 0,
        "code": code,
        "message": message,
        "build": "bench-minimal",
    }
    if data is not None or code == 0:
        body["data"] = data
    raw = json.dumps(body, separators=(",", ":")).encode()
    reason = {200: b"OK", 404: b"Not Found"}[status]
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (status, reason, len(raw))
        + raw
    )


def answers(interval: float) -> dict[bytes, bytes]:
    """Path -> the answer's bytes (the query, if any, is ignored)."""
    return {
        b"/ota/api/agent/register": envelope(
            {"deviceUuid": "00000000-0000-4000-8000-000000000001", "token": TOKEN}
        ),
        CHECKIN: envelope(
            {
                "nextCheckinSeconds": interval,
                "serverTime": "2026-01-01T00:00:00.000Z",
                "inventoryWanted": False,
                "profiles": [],
            }
        ),
        b"/ota/api/agent/apps": envelope(None),
        b"/ota/api/agent/events": envelope(None),
        b"/ota/api/agent/profiles": envelope([]),
    }


NOT_FOUND = envelope(None, code=40400, status=404, message="no such path")


class Counter:
    __slots__ = ("requests",)

    def __init__(self) -> None:
        self.requests = 0


class Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests, or after an upgrade a held WebSocket."""

    __slots__ = ("_key", "_out", "_parser", "_path", "_ws", "answers", "counter", "transport")

    def __init__(self, table: dict[bytes, bytes], counter: Counter) -> None:
        self.answers, self.counter = table, counter
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._path = b""
        self._key = b""
        self._out: list[bytes] = []
        self._ws: bytearray | None = None  # after the upgrade: frames not yet read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._path = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 17 and name.lower() == b"sec-websocket-key":
            self._key = value

    def on_message_complete(self) -> None:
        path = self._path.split(b"?", 1)[0]
        if path == COUNT_PATH:
            body = b'{"requests":%d}' % self.counter.requests
            self._out.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        self.counter.requests += 1
        self._out.append(self.answers.get(path, NOT_FOUND))

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._frames(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._out.clear()  # the upgrade request's own answer is the handshake
            self._upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()
            return
        if self._out:
            assert self.transport is not None
            self.transport.write(b"".join(self._out))
            self._out.clear()

    def _upgrade(self, rest: bytes) -> None:
        assert self.transport is not None
        self.counter.requests += 1
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest())  # noqa: S324
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self._ws = bytearray()
        if rest:
            self._frames(rest)

    def _frames(self, data: bytes) -> None:
        """Client frames (masked, RFC 6455): a ping gets its pong, a close its close."""
        assert self._ws is not None and self.transport is not None
        buf = self._ws
        buf += data
        while len(buf) >= 2:
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            at = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, at = int.from_bytes(buf[2:10], "big"), 10
            masked = buf[1] & 0x80
            end = at + (4 if masked else 0) + length
            if len(buf) < end:
                return
            payload = bytes(buf[end - length : end])
            if masked:
                mask = buf[at : at + 4]
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            del buf[:end]
            if opcode == 0x9 and length <= 125:  # ping -> pong (server frames are not masked)
                self.transport.write(bytes((0x8A, length)) + payload)
            elif opcode == 0x8:  # close -> close, then the connection ends
                self.transport.write(bytes((0x88, min(length, 2))) + payload[:2])
                self.transport.close()
                return


# -- for the benches: the endpoint in its own process, and what /proc says of a process ---------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parent.parent


class EndpointProcess:
    """`with EndpointProcess(interval=1) as endpoint:` the endpoint in a process of its own on a
    free loopback port; `endpoint.url`, `endpoint.pid`, `endpoint.answered()`. At the end
    SIGTERM, a bounded wait, SIGKILL if that runs out. RuntimeError (one line) when it cannot
    start."""

    def __init__(self, *, interval: float = 60.0) -> None:
        self.interval = interval
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Self:
        if httptools is None:
            raise RuntimeError("httptools is not installed (pip install -e '.[bench]')")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.minimal_endpoint", "--interval", f"{self.interval:g}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # it prints one line once it listens, or exits
        try:
            self.url = str(json.loads(line)["url"])
        except (ValueError, KeyError) as exc:
            self.__exit__()
            raise RuntimeError(f"the minimal endpoint did not start ({line!r})") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def answered(self) -> int:
        """Requests the endpoint has answered so far."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            connection.request("GET", COUNT_PATH.decode())
            return int(json.loads(connection.getresponse().read())["requests"])
        finally:
            connection.close()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE // 1024


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


async def serve(port: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    table, counter = answers(interval), Counter()
    server = await loop.create_server(
        lambda: Connection(table, counter), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(
        json.dumps({"event": "endpoint.listening", "url": f"http://127.0.0.1:{bound}"}) + "\n"
    )
    sys.stdout.flush()
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=60.0, help="nextCheckinSeconds")
    args = parser.parse_args()
    if httptools is None:
        sys.exit("minimal_endpoint: httptools is not installed (pip install -e '.[bench]')")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.interval))
    else:
        uvloop.run(serve(args.port, args.interval))


if __name__ == "__main__":
    main()
