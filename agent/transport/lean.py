"""A lean HTTP/1.1 transport for fleets: an asyncio Protocol and httptools on a shared keep-alive
pool, for the requests that make a fleet's load (check-ins, events, inventories).

Why: in a simulator worker aiohttp's client spent more CPU per check-in than the agent itself
(request and response objects, stream readers, a timer and a task per request). Here a request
is its bytes written to a pooled connection and a future; the answer is parsed by httptools
(llhttp, C) straight into a protocol Response. Downloads and push channels (rare, long) go
through the fleet's aiohttp session, made on first use: `LeanTransport` is a Transport like
AiohttpTransport, and a fleet picks one or the other with one setting.

Theory of operation. `LeanPool` holds up to `limit` connections to one origin (http or https).
A request takes the most recently freed idle connection (LIFO: warm sockets), else opens one
while fewer than `limit` are open, else (with `pipeline` > 1) is pipelined on the open
connection with the fewest requests in flight, below `pipeline`, else waits for a free one
(FIFO). Answers come in the order the requests went out (HTTP/1.1), each resolving the oldest
waiter of its connection. An idle connection is closed after `keepalive_s` (below a server's
usual 75 s) and never reused after an answer that says `Connection: close`.
Timeouts: one sweeper per pool (not a timer per request) wakes every min(1 s, timeout/4) while
requests are in flight: a request older than `timeout_s` fails with a timeout, and its
connection is closed (the answers on it would no longer line up), and a request still queued
for a connection after `timeout_s` fails with a timeout too (no timer or timeout object per
queued request: at 200 agents on 64 slots, a third of them wait there); so a timeout fires
between `timeout_s` and 1.25x that. Errors, as AiohttpTransport reports them to the observer: a
connection refused or unreachable is TransportError with the OSError's name
(ConnectionRefusedError); a connection lost before the answer "ServerDisconnectedError";
a malformed answer "ClientPayloadError"; no answer in time "timeout". Pipelining is off
(`pipeline=1`) by default: a POST pipelined behind one that a server drops is lost too.
Header names and values with CR or LF are refused (no header injection through a token).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self
from urllib.parse import urlencode, urlsplit

import httptools

from agent import protocol
from agent.clock import Clock
from agent.errors import ConfigError, TransportError
from agent.protocol import Request, Response
from agent.transport.base import Download, Observer, PushChannel, Sink, no_observer, report
from agent.transport.client import SYSTEM_CLOCK, AiohttpTransport, Endpoint, TlsOptions
from agent.transport.fleet import KEEPALIVE_S, FleetTransports

DEFAULT_LIMIT = 256  # connections to the origin at most
USER_AGENT = "midm-fleet"
CONNECT = "ServerDisconnectedError"  # the error name of a connection lost mid-answer
MALFORMED = "ClientPayloadError"


class _Failed(Exception):
    """Inside the pool: how a request failed (`name` for the observer, `text` for the error)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name


class _Waiter:
    """One request in flight on a connection: its future and deadline (loop time)."""

    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[Response], deadline: float) -> None:
        self.future, self.deadline = future, deadline


class _Connection(asyncio.Protocol):
    """One pooled socket: writes requests, parses answers in order, resolves their waiters."""

    __slots__ = (
        "_body",
        "_head_done",
        "_headers",
        "_parser",
        "_pending",
        "closed",
        "idle_since",
        "pool",
        "reusable",
        "transport",
        "waiters",
    )

    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_done = False
        self._pending: list[bytes] = []  # requests waiting for the end of the loop's turn

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail_all(_Failed(MALFORMED, f"malformed answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.reusable = True, False
        if self.waiters and self._head_done and self._reads_to_eof():
            self._complete()  # an answer delimited by the end of the connection
        self._fail_all(_Failed(CONNECT, "the server closed the connection before answering"))
        self.pool.forget(self)

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._complete()

    # -- the pool's side

    def _reads_to_eof(self) -> bool:
        names = {k.lower() for k in self._headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def _complete(self) -> None:
        status = self._parser.get_status_code()
        response = protocol.response(
            status, self._body[0] if len(self._body) == 1 else b"".join(self._body), self._headers
        )
        self._headers, self._body, self._head_done = {}, [], False
        if not self.waiters:  # an answer nobody asked for: the stream is out of step
            self.close()
            return
        waiter = self.waiters.popleft()
        if not waiter.future.done():
            waiter.future.set_result(response)
        if not self.waiters:
            self.pool.release(self)

    def _fail_all(self, error: _Failed) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def write(self, data: bytes, waiter: _Waiter) -> None:
        """Send at once, or (pipelining) at the end of this turn of the loop, with every other
        request put on this connection meanwhile: one system call for them all."""
        assert self.transport is not None
        self.waiters.append(waiter)
        if self.pool.pipeline == 1:
            self.transport.write(data)
            return
        if not self._pending:
            self.pool.loop().call_soon(self._flush)
            self.pool.filling = self
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if self.pool.filling is self:
            self.pool.filling = None
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(pending))

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class LeanPool:
    """Keep-alive connections to one origin, shared by every LeanTransport of a fleet."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | bool = True,
        limit: int = DEFAULT_LIMIT,
        pipeline: int = 1,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        """Raise ConfigError for a URL that is not http(s)://host[:port][/prefix]."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"server URL {base_url!r}: give an http:// or https:// URL")
        if limit < 1 or pipeline < 1:
            raise ConfigError("the lean pool needs limit >= 1 and pipeline >= 1")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            if isinstance(ssl_context, ssl.SSLContext):
                self.ssl = ssl_context
            else:
                self.ssl = ssl.create_default_context()
                if ssl_context is False:
                    self.ssl.check_hostname = False
                    self.ssl.verify_mode = ssl.CERT_NONE
        self.prefix = parts.path.rstrip("/")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self._head_tail = f"Host: {netloc}\r\nUser-Agent: {USER_AGENT}\r\n"
        self.timeout_s = timeout_s
        self.limit, self.pipeline, self.keepalive_s = limit, pipeline, keepalive_s
        self._connections: set[_Connection] = set()
        self._idle: list[_Connection] = []  # LIFO
        # requests waiting for a connection (FIFO), each with its deadline (loop time)
        self._queue: collections.deque[tuple[asyncio.Future[_Connection], float]] = (
            collections.deque()
        )
        self._opening = 0
        self._background: set[asyncio.Task[None]] = set()  # connections opened for the queue
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.filling: _Connection | None = None  # has requests to write at the turn's end

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the pool runs on (its connections are bound to it), looked up once: each
        asyncio.get_running_loop() is a getpid() system call on CPython 3.11 (fork check)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def connections(self) -> int:
        """Open connections (idle or busy)."""
        return len(self._connections)

    # -- a request

    def encode(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> bytes:
        """The request's bytes; ValueError for a header with CR or LF in it."""
        target = self.prefix + path
        if params:
            target += "?" + urlencode(params)
        parts = [method, " ", target, " HTTP/1.1\r\n", self._head_tail]
        for name, value in headers.items():
            parts += (name, ": ", value, "\r\n")
        if body is not None:
            parts += ("Content-Length: ", str(len(body)), "\r\n")
        parts.append("\r\n")
        head = "".join(parts)
        # one line each: the request line, Host, User-Agent, the headers, the length, the end
        lines = len(headers) + (5 if body is not None else 4)
        if head.count("\n") != lines or head.count("\r") != lines:
            raise ValueError("a header name or value holds CR or LF")
        return head.encode() + body if body else head.encode()

    async def exchange(self, data: bytes) -> Response:
        """Send one encoded request and wait for its answer; raise _Failed or TimeoutError."""
        loop = self.loop()
        connection = self._take()
        if connection is None:
            connection = await self._acquire(loop)
        future: asyncio.Future[Response] = loop.create_future()
        connection.write(data, _Waiter(future, loop.time() + self.timeout_s))
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_period(), self._sweep)
        return await future

    def _take(self) -> _Connection | None:
        """(Pipelining) the connection that already has requests to write at the end of this
        turn, while it has room: the requests of one turn go in one write; else an idle
        connection still fresh, or (pipelining, at the limit) a busy one with room; else None."""
        filling = self.filling
        if filling is not None and filling.reusable and len(filling.waiters) < self.pipeline:
            return filling  # (a closed connection is never reusable)
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if self.loop().time() - connection.idle_since > self.keepalive_s:
                connection.close()
                continue
            return connection
        if self.pipeline > 1 and len(self._connections) + self._opening >= self.limit:
            best: _Connection | None = None
            for connection in self._connections:
                depth = len(connection.waiters)
                usable = connection.reusable and not connection.closed and depth < self.pipeline
                if usable and (best is None or depth < len(best.waiters)):
                    best = connection
            return best
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        if self._closed:
            raise _Failed("ClientConnectionError", "the transport pool is closed")
        if len(self._connections) + self._opening < self.limit:
            return await self._open(loop)
        # the sweeper fails it with TimeoutError past its deadline: no timer of its own
        waiter: asyncio.Future[_Connection] = loop.create_future()
        self._queue.append((waiter, loop.time() + self.timeout_s))
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_period(), self._sweep)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over as the wait ended
                self.release(waiter.result())
            raise

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        self._opening += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except OSError as exc:
            raise _Failed(type(exc).__name__, str(exc) or type(exc).__name__) from exc
        finally:
            self._opening -= 1
        if self._closed:
            connection.close()
            raise _Failed("ClientConnectionError", "the transport pool is closed")
        connection.idle_since = loop.time()
        self._connections.add(connection)
        return connection

    def release(self, connection: _Connection) -> None:
        """`connection` has nothing in flight: hand it to a queued request, or keep it idle."""
        if connection.closed or not connection.reusable:
            connection.close()
            self._wake_one()
            return
        while self._queue:
            waiter, _ = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = self.loop().time()
        self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """A connection ended: it leaves the pool (a queued request may open another)."""
        self._connections.discard(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        """A queued request takes a slot freed by a closed connection (it opens its own)."""
        if not self._queue or len(self._connections) + self._opening >= self.limit:
            return
        waiter, _ = self._queue.popleft()
        if not waiter.done():
            task = asyncio.get_running_loop().create_task(self._open_for(waiter))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _open_for(self, waiter: asyncio.Future[_Connection]) -> None:
        try:
            connection = await self._open(asyncio.get_running_loop())
        except (_Failed, TimeoutError) as exc:
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():
            self.release(connection)
        else:
            waiter.set_result(connection)

    # -- time

    def _sweep_period(self) -> float:
        return min(1.0, self.timeout_s / 4)

    def _sweep(self) -> None:
        """Fail requests past their deadline (closing their connections) and queued ones
        past theirs (TimeoutError); close stale idle connections; run again while anything is
        in flight, queued or idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        while queue and queue[0][1] <= now:  # FIFO, one timeout: deadlines in order
            waiter, _ = queue.popleft()
            if not waiter.done():
                waiter.set_exception(TimeoutError())
        busy = bool(queue)
        for connection in list(self._connections):
            if connection.waiters:
                busy = True
                if connection.waiters[0].deadline <= now:
                    connection._fail_all(_Failed("timeout", "no answer in time"))
                    connection.close()
            elif now - connection.idle_since > self.keepalive_s and not connection.closed:
                connection.close()
        if (busy or self._connections) and not self._closed:
            self._sweeper = loop.call_later(self._sweep_period(), self._sweep)

    async def close(self) -> None:
        """Close every connection; requests in flight fail."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._connections):
            connection._fail_all(_Failed(CONNECT, "the transport pool was closed"))
            connection.close()
        self._idle.clear()
        while self._queue:
            waiter, _ = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(_Failed("ClientConnectionError", "the pool was closed"))
        await asyncio.sleep(0)  # let the transports call connection_lost


class LeanTransport:
    """An agent's Transport on a fleet's LeanPool; downloads and the push channel go through
    the fleet's aiohttp session (`LeanFleetTransports`). A few pointers, no __dict__."""

    __slots__ = ("clock", "fleet", "observer")

    def __init__(
        self,
        fleet: LeanFleetTransports,
        *,
        clock: Clock = SYSTEM_CLOCK,
        observer: Observer = no_observer,
    ) -> None:
        self.fleet, self.clock, self.observer = fleet, clock, observer

    @property
    def base_url(self) -> str:
        return self.fleet.endpoint.base_url

    async def close(self) -> None:
        """Nothing to close: the pool and the session are the fleet's."""

    async def send(self, request: Request) -> Response:
        clock = self.clock
        name = request.name or request.path
        pool = self.fleet.pool
        body = protocol.encode_body(request)
        status, error = 0, None
        started = clock.monotonic()
        try:
            data = pool.encode(
                request.method,
                request.path,
                request.params,
                protocol.wire_headers(request, body),
                body,
            )
            response = await pool.exchange(data)
            status = response.status
            return response
        except _Failed as exc:
            error = exc.name
            if exc.name == "timeout":
                raise TransportError(
                    f"{name}: no answer from {self.base_url} within {pool.timeout_s:g} s"
                ) from None
            raise TransportError(f"{name}: cannot reach {self.base_url} ({exc})") from None
        except TimeoutError:
            error = "timeout"
            raise TransportError(
                f"{name}: no answer from {self.base_url} within {pool.timeout_s:g} s"
            ) from None
        except ValueError as exc:
            error = type(exc).__name__
            raise TransportError(f"{name}: cannot send ({exc})") from None
        finally:
            report(
                self.observer,
                clock,
                name=name,
                intended=request.intended,
                started=started,
                status=status,
                error=error,
            )

    def _aiohttp(self) -> AiohttpTransport:
        return self.fleet.aiohttp.transport(clock=self.clock, observer=self.observer)

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        return await self._aiohttp().download(path, headers, target, offset)

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        return await self._aiohttp().download_to(path, headers, sink)

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[PushChannel]:
        async with self._aiohttp().open_push(path, headers) as channel:
            yield channel


class LeanFleetTransports:
    """FleetTransports' twin on a LeanPool: `transport()` makes an agent's LeanTransport.

    async with LeanFleetTransports(url, timeout_s=10, clock=clock, observer=stats) as fleet:
        agents = [Agent(transport=fleet.transport(), ...) for ...]

    Leaving the block closes the pool and the aiohttp session (if one was made).
    """

    def __init__(
        self,
        server: str | Endpoint,
        *,
        timeout_s: float = 10.0,
        tls: TlsOptions | None = None,
        clock: Clock = SYSTEM_CLOCK,
        observer: Observer = no_observer,
        limit: int = DEFAULT_LIMIT,
        pipeline: int = 1,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        if isinstance(server, Endpoint):
            self.endpoint = server
        else:
            self.endpoint = Endpoint.build(server, timeout_s=timeout_s, tls=tls)
        self.clock, self.observer = clock, observer
        total = self.endpoint.timeout.total
        self.pool = LeanPool(
            self.endpoint.base_url,
            timeout_s=total if total is not None else timeout_s,
            ssl_context=self.endpoint.ssl,
            limit=limit,
            pipeline=pipeline,
            keepalive_s=keepalive_s,
        )
        self._aiohttp: FleetTransports | None = None

    @property
    def aiohttp(self) -> FleetTransports:
        """The aiohttp side (downloads, push channels), made on first use."""
        if self._aiohttp is None:
            self._aiohttp = FleetTransports(self.endpoint, clock=self.clock, observer=self.observer)
        return self._aiohttp

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def transport(
        self, *, clock: Clock | None = None, observer: Observer | None = None
    ) -> LeanTransport:
        return LeanTransport(self, clock=clock or self.clock, observer=observer or self.observer)

    async def close(self) -> None:
        await self.pool.close()
        if self._aiohttp is not None:
            await self._aiohttp.close()
            self._aiohttp = None
