"""The aiohttp Transport: timeouts, TLS options, and aiohttp's exceptions translated into ours.

One ClientSession per agent on a rig; a fleet shares one session (`agent.transport.fleet`), and
one `Endpoint` (URL, timeouts, TLS context: built once), so that each agent's transport is a
handful of pointers. TLS: verification is on by default; `ca_bundle` adds a CA file;
`client_cert`/`client_key` present a client certificate. Bodies are encoded and push messages
decoded by `agent.protocol`, as in MockTransport; exchanges are timed on the agent's Clock.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent import protocol
from agent.clock import Clock, SystemClock
from agent.errors import ConfigError, PushClosed, PushRefused, TransportError
from agent.protocol import Request, Response
from agent.transport.base import Download, Observer, Sink, no_observer, report

SYSTEM_CLOCK = SystemClock()
PUSH_HEARTBEAT_S = 30.0
PUSH_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)
CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsOptions:
    verify: bool = True
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def context(self) -> ssl.SSLContext | bool:
        if not self.verify:
            return False
        if self.ca_bundle is None and self.client_cert is None:
            return True
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_bundle) if self.ca_bundle else None
            )
            if self.client_cert is not None:
                context.load_cert_chain(
                    str(self.client_cert), str(self.client_key) if self.client_key else None
                )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS options: {exc}") from exc
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """The server and how to reach it; built once and shared by every transport to it."""

    base_url: str
    timeout: aiohttp.ClientTimeout  # a request, from connect to the last byte of the answer
    stall: aiohttp.ClientTimeout  # a download: connecting, and each read (not the whole file)
    ssl: ssl.SSLContext | bool

    @classmethod
    def build(
        cls, base_url: str, *, timeout_s: float = 10.0, tls: TlsOptions | None = None
    ) -> Endpoint:
        """Raise ConfigError when the TLS options cannot work."""
        return cls(
            base_url=base_url.rstrip("/"),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            stall=aiohttp.ClientTimeout(sock_read=timeout_s, sock_connect=timeout_s),
            ssl=(tls or TlsOptions()).context(),
        )


class AiohttpPush:
    __slots__ = ("socket",)

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        async for message in self.socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                value = protocol.decode_push(message.data)
                if value is not None:
                    yield value
            elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break
        code = self.socket.close_code
        raise PushClosed(f"push channel closed (code {code})", code=code)


class AiohttpTransport:
    """`AiohttpTransport(url, timeout_s=..., tls=...)` on a rig (it owns its session), or
    `AiohttpTransport(endpoint, session=shared)` in a fleet (the owner of the session closes it).
    """

    __slots__ = ("_own_session", "_session", "clock", "endpoint", "observer")

    def __init__(
        self,
        server: str | Endpoint,
        *,
        timeout_s: float = 10.0,
        tls: TlsOptions | None = None,
        session: aiohttp.ClientSession | None = None,
        observer: Observer = no_observer,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(server, Endpoint):
            self.endpoint = server
        else:
            self.endpoint = Endpoint.build(server, timeout_s=timeout_s, tls=tls)
        self._session = session
        self._own_session = session is None
        self.observer = observer
        self.clock = clock

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: Request) -> Response:
        endpoint, clock = self.endpoint, self.clock
        name = request.name or request.path
        body = protocol.encode_body(request)
        headers = protocol.wire_headers(request, body)
        status, error = 0, None
        started = clock.monotonic()
        try:
            async with self.session().request(
                request.method,
                endpoint.base_url + request.path,
                data=body,
                params=dict(request.params) or None,
                headers=headers,
                timeout=endpoint.timeout,
                ssl=endpoint.ssl,
            ) as answer:
                status = answer.status
                return Response(
                    status=answer.status, body=await answer.read(), headers=dict(answer.headers)
                )
        except TimeoutError as exc:
            error = "timeout"
            raise TransportError(
                f"{name}: no answer from {endpoint.base_url} within {endpoint.timeout.total:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
            raise TransportError(f"{name}: cannot reach {endpoint.base_url} ({exc})") from exc
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

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        """GET `path` into the file `target`: the rest from `offset` (Range) when it is > 0;
        a 206 appends, a 200 rewrites the file."""

        async def into_file(answer: aiohttp.ClientResponse) -> None:
            mode = "ab" if answer.status == 206 else "wb"
            handle = await asyncio.to_thread(target.open, mode)
            try:
                async for chunk in answer.content.iter_chunked(CHUNK):
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)

        return await self._get(path, protocol.resume_from(headers, offset), into_file)

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        """GET `path` into `sink`: the rest (Range) when the sink holds bytes; a 206 appends,
        a 200 empties the sink first. What arrived before a dropped connection stays there."""

        async def into_sink(answer: aiohttp.ClientResponse) -> None:
            if answer.status == 200:
                sink.truncate()
            async for chunk in answer.content.iter_chunked(CHUNK):
                sink.write(chunk)

        return await self._get(path, protocol.resume_from(headers, sink.size), into_sink)

    async def _get(
        self,
        path: str,
        headers: dict[str, str],
        consume: Callable[[aiohttp.ClientResponse], Awaitable[None]],
    ) -> Download:
        """A download: `consume` the body of a 200 or 206 (any other is read and returned)."""
        endpoint, clock = self.endpoint, self.clock
        status, error = 0, None
        started = clock.monotonic()
        try:
            async with self.session().get(
                endpoint.base_url + path, headers=headers, timeout=endpoint.stall, ssl=endpoint.ssl
            ) as answer:
                status = answer.status
                if answer.status in (200, 206):
                    await consume(answer)
                else:
                    await answer.read()
                return Download(status=answer.status, headers=dict(answer.headers))
        except TimeoutError as exc:
            error = "timeout"
            raise TransportError(
                f"download {path}: stalled for {endpoint.stall.sock_read:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
            raise TransportError(f"download {path}: interrupted ({exc})") from exc
        finally:
            report(
                self.observer,
                clock,
                name="download",
                intended=None,
                started=started,
                status=status,
                error=error,
            )

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[AiohttpPush]:
        endpoint, clock = self.endpoint, self.clock
        status, error = 0, None
        started = clock.monotonic()
        try:
            socket = await self.session().ws_connect(
                endpoint.base_url + path,
                headers=dict(headers),
                heartbeat=PUSH_HEARTBEAT_S,
                ssl=endpoint.ssl,
                timeout=PUSH_TIMEOUT,
            )
            status = 101
        except aiohttp.WSServerHandshakeError as exc:
            status, error = exc.status, type(exc).__name__
            raise PushRefused(
                f"push channel refused (HTTP {exc.status})", status=exc.status
            ) from exc
        except TimeoutError as exc:
            error = "timeout"
            raise TransportError(f"push channel: cannot reach {endpoint.base_url} ({exc})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
            raise TransportError(f"push channel: cannot reach {endpoint.base_url} ({exc})") from exc
        finally:
            report(
                self.observer,
                clock,
                name="push",
                intended=None,
                started=started,
                status=status,
                error=error,
            )
        try:
            yield AiohttpPush(socket)
        finally:
            await socket.close()
