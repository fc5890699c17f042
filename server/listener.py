"""The listening sockets, and what may happen on the connections they accept.

`bind(host, port)` binds every address `host` resolves to (as asyncio's create_server would),
before the server writes anything: a taken port leaves no trace. `Listener.start` then serves an
app on those sockets with every connection made by a `ConnectionGuard` (issue 12):
- At most `max_connections` are open (MAX_CONNECTIONS, --max-connections), never more than the
  open-files limit less FD_RESERVE (or a quarter of the limit if that is less), whose soft value
  `open_files_cap` first raises toward the hard one. A connection over the cap is closed at
  once; `server.connections_full` is logged once per LOG_EVERY_S with the number refused.
- A request head (line and headers) must be complete HEADER_TIMEOUT_S after the connection
  opened, or after the first byte of a request that follows an idle keep-alive spell; else the
  connection is closed. The head is complete at its blank line (CR LF CR LF, found in the bytes
  as they arrive, so a busy event loop cannot make a complete head look late); from then until
  its answer is written nothing is timed here (bodies and downloads may take long; a WebSocket
  has its heartbeat). Idle keep-alive connections close after KEEPALIVE_S (aiohttp's
  keepalive_timeout), which also bounds a client that sends only blank lines.
- A request aiohttp cannot parse (request line, header syntax, more than MAX_HEADERS headers or
  lines over MAX_REQUEST_LINE / MAX_HEADER_FIELD bytes, body framing) is answered with the
  error envelope, 400 40000 and a sentence saying what was wrong (never the input), and the
  connection is closed; `http.bad_request` is logged once per LOG_EVERY_S, without traceback.
  An exception that escaped the app's middlewares is the 500 envelope with its `uq` logged.
- `accept()` failing for want of descriptors or memory is one `server.accept_failed` line per
  LOG_EVERY_S instead of a traceback per attempt (asyncio stops accepting for a second itself).
aiohttp has no hook for its own error answers (aio-libs/aiohttp#3287): `GuardedHandler`
subclasses its RequestHandler, and `GuardedSite` hands the guard to `loop.create_server`.
"""

from __future__ import annotations

import asyncio
import errno
import math
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import http_exceptions, web

from server.config import ServerConfig
from server.domain.ratelimit import LogThrottle
from server.errors import ApiError, ConfigError, Internal, MalformedRequest
from server.limits import (
    FD_RESERVE,
    LOG_EVERY_S,
    MAX_HEADER_FIELD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
)
from server.wire import error_body, error_response

log = structlog.get_logger("server.listener")

BACKLOG = 128  # aiohttp's default
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def bind(host: str, port: int) -> list[socket.socket]:
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot resolve {host!r} ({exc.strerror})") from exc
    addresses = dict.fromkeys((family, address) for family, _, _, _, address in found)
    bound: list[socket.socket] = []
    try:
        for family, address in addresses:
            bound.append(socket.create_server(address, family=family, backlog=BACKLOG))
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return bound


def url_of(host: str, sockets: list[socket.socket]) -> str:
    """The server's base URL: `host` and the port actually bound (port 0 picks one)."""
    port = sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def open_files_cap(wanted: int) -> int:
    """The connection cap for `wanted`: the soft open-files limit is raised toward the hard one
    as far as `wanted` + FD_RESERVE needs, and the cap kept the reserve below what it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            if target > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - min(FD_RESERVE, soft // 4)))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    keepalive_s: float
    log_every_s: float = LOG_EVERY_S

    @classmethod
    def of(cls, config: ServerConfig, max_connections: int | None = None) -> ConnectionLimits:
        return cls(
            max_connections=config.max_connections if max_connections is None else max_connections,
            header_timeout_s=config.header_timeout_s,
            keepalive_s=config.keepalive_s,
        )

    def handler_options(self) -> dict[str, Any]:
        """What aiohttp's RequestHandler takes (the AppRunner gets the same)."""
        return {
            "keepalive_timeout": self.keepalive_s,
            "max_line_size": MAX_REQUEST_LINE,
            "max_field_size": MAX_HEADER_FIELD,
            "max_headers": MAX_HEADERS,
            "access_log": None,
            # never round a connection's timers (keep-alive, WebSocket heartbeat) up to a whole
            # second: aiohttp does above 5 s, which put every channel's 30 s ping on one tick
            # (15,000 channels: ~500 pings in one burst a second, to a fleet that must answer)
            "timeout_ceil_threshold": math.inf,
        }


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    open: int
    refused: int  # closed at once, over the cap
    head_timeouts: int  # closed for a request head not complete in time
    bad_requests: int  # answered 400 by the guard: aiohttp could not parse them


def _reason(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, in words of ours only."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return (
            f"the request line or a header is over its limit ({MAX_REQUEST_LINE} bytes for "
            f"the line, {MAX_HEADER_FIELD} for a header)"
        )
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "the request line does not start with a valid HTTP method"
    if isinstance(exc, http_exceptions.BadStatusLine):
        return "the request line is malformed (expected: METHOD /path HTTP/1.1)"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "the request target is not a valid URL path"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "a header is malformed"
    if isinstance(exc, http_exceptions.PayloadEncodingError):
        return "the body's framing (Content-Length, Transfer-Encoding, chunks) is invalid"
    if isinstance(exc, http_exceptions.BadHttpMessage) and "Too many headers" in exc.message:
        return f"the request has more than {MAX_HEADERS} headers"
    return "the request is not valid HTTP/1.1 (request line, headers or body framing)"


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler, counted by its guard, with a head timeout and the error
    envelope for the requests aiohttp cannot parse."""

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **options: Any) -> None:
        super().__init__(manager, loop=asyncio.get_running_loop(), **options)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None
        self._busy = False  # a head is complete: its request is in the app or being answered
        self._tail = b""  # the last bytes of an incomplete head, to find its end across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
        self._guard.closed()

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:  # the head is complete (aiohttp parses it, or says 400)
                self._busy, self._tail = True, b""
                self._cancel_head_timer()
            else:
                self._tail = seen[-3:]
                if self._head_timer is None:  # the first byte of a request after idling
                    self._arm_head_timer()
        super().data_received(data)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._busy, self._tail = False, b""  # answered: the connection idles or reads a head

    def _arm_head_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._guard.limits.header_timeout_s, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._busy:
            self._guard.head_timeouts += 1
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The envelope instead of aiohttp's plain text (which echoes the input)."""
        error: ApiError
        if status < 500:
            error = MalformedRequest(_reason(exc))
            if status != 400:
                error.code, error.status = status * 100, status
            self._guard.bad_request(request.remote, error.message)
            response = error_response(error)
        else:
            error = Internal("internal error; the server log has the details under this uq")
            body, uq = error_body(error)
            log.error(
                "request.crashed", method=request.method, path=request.path, uq=uq, exc_info=exc
            )
            response = error_response(error, body)
        if request.writer.output_size > 0:  # a response began: nothing else can be sent
            raise ConnectionError("response already started; closing the connection")
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionGuard:
    """The protocol factory of the listening sockets: counts the open connections, refuses those
    over the cap, and throttles the log lines of repeated connection events."""

    def __init__(
        self,
        server: web.Server,
        limits: ConnectionLimits,
        *,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.server = server
        self.limits = limits
        self._options = limits.handler_options()
        self._now = now or asyncio.get_running_loop().time
        self.open = 0
        self.refused = 0
        self.head_timeouts = 0
        self.bad_requests = 0
        self._full_log = LogThrottle(limits.log_every_s)
        self._bad_log = LogThrottle(limits.log_every_s)
        self._accept_log = LogThrottle(limits.log_every_s)

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            suppressed = self._full_log.due(self._now())
            if suppressed is not None:
                log.warning(
                    "server.connections_full",
                    max_connections=self.limits.max_connections,
                    refused_since_last_line=suppressed + 1,
                    hint="new connections are closed at once; raise --max-connections "
                    "(and the open-files limit, ulimit -n) if the clients are legitimate",
                )
            return _Refused()
        self.open += 1  # counted when made: a burst of accepts cannot overshoot the cap
        return GuardedHandler(self.server, guard=self, **self._options)

    def closed(self) -> None:
        self.open -= 1

    def bad_request(self, peer: str | None, reason: str) -> None:
        self.bad_requests += 1
        suppressed = self._bad_log.due(self._now())
        if suppressed is not None:
            log.info("http.bad_request", peer=peer, reason=reason, suppressed=suppressed)

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: accept() out of resources becomes one throttled line;
        anything else goes to the default handler."""
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in OUT_OF_RESOURCES
            and "accept" in str(context.get("message", ""))
        ):
            suppressed = self._accept_log.due(self._now())
            if suppressed is not None:
                log.warning(
                    "server.accept_failed",
                    error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                    suppressed=suppressed,
                    open_connections=self.open,
                    hint="out of file descriptors or memory: accepting pauses for a second; "
                    "raise the open-files limit (ulimit -n) or lower --max-connections",
                )
            return
        loop.default_exception_handler(context)

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(self.open, self.refused, self.head_timeouts, self.bad_requests)


class GuardedSite(web.BaseSite):
    """A bound socket served through the guard (aiohttp's SockSite, with our factory)."""

    __slots__ = ("_guard", "_name", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, guard: ConnectionGuard) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._sock, self._guard = sock, guard
        host, port = sock.getsockname()[:2]
        self._name = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._guard, sock=self._sock, backlog=BACKLOG)


class Listener:
    """An app served on bound sockets through one ConnectionGuard; `stop()` shuts it down."""

    def __init__(
        self, runner: web.AppRunner, guard: ConnectionGuard, previous: Any | None = None
    ) -> None:
        self.runner, self.guard = runner, guard
        self._previous_handler = previous  # the loop's exception handler before ours

    @classmethod
    async def start(
        cls,
        app: web.Application,
        sockets: list[socket.socket],
        limits: ConnectionLimits,
        *,
        shutdown_timeout: float = 10.0,
    ) -> Listener:
        """Serve `app`; the loop's exception handler becomes the guard's (accept failures)."""
        runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **limits.handler_options()
        )
        await runner.setup()
        assert runner.server is not None
        guard = ConnectionGuard(runner.server, limits)
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(guard.exception_handler)
        listener = cls(runner, guard, previous)
        try:
            for sock in sockets:
                await GuardedSite(runner, sock, guard).start()
        except BaseException:
            await listener.stop()
            raise
        return listener

    async def stop(self) -> None:
        try:
            await self.runner.cleanup()
        finally:
            asyncio.get_running_loop().set_exception_handler(self._previous_handler)
