"""The aiohttp Transport: timeouts, TLS options, and aiohttp's exceptions translated into ours.

One ClientSession per agent on a rig; the simulator passes a shared session (one connector for
thousands of agents). TLS: verification is on by default; `ca_bundle` adds a CA file;
`client_cert`/`client_key` present a client certificate.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import ConfigError, PushClosed, TransportError
from agent.protocol import Request, Response
from agent.transport.base import Download, Observer, no_observer


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


class AiohttpPush:
    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        async for message in self.socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    value = json.loads(message.data)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    yield value
            elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break
        raise PushClosed(f"push channel closed (code {self.socket.close_code})")


class AiohttpTransport:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        tls: TlsOptions | None = None,
        session: aiohttp.ClientSession | None = None,
        observer: Observer = no_observer,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.ssl = (tls or TlsOptions()).context()
        self._session = session
        self._own_session = session is None
        self.observer = observer

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
        started = time.monotonic()
        status, error = 0, None
        try:
            body = None if request.body is None else json.dumps(request.body).encode()
            headers = dict(request.headers)
            if body is not None:
                headers["Content-Type"] = "application/json"
            async with self.session().request(
                request.method,
                self.base_url + request.path,
                data=body,
                params=dict(request.params) or None,
                headers=headers,
                timeout=self.timeout,
                ssl=self.ssl,
            ) as answer:
                status = answer.status
                return Response(
                    status=answer.status, body=await answer.read(), headers=dict(answer.headers)
                )
        except TimeoutError as exc:
            error = "timeout"
            raise TransportError(
                f"{request.name or request.path}: no answer from {self.base_url} within "
                f"{self.timeout.total:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
            raise TransportError(
                f"{request.name or request.path}: cannot reach {self.base_url} ({exc})"
            ) from exc
        finally:
            self.observer(
                request.name or request.path, started, time.monotonic() - started, status, error
            )

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        started = time.monotonic()
        status, error = 0, None
        request_headers = dict(headers)
        if offset > 0:
            request_headers["Range"] = f"bytes={offset}-"
        timeout = aiohttp.ClientTimeout(
            sock_read=self.timeout.total, sock_connect=self.timeout.total
        )
        try:
            async with self.session().get(
                self.base_url + path, headers=request_headers, timeout=timeout, ssl=self.ssl
            ) as answer:
                status = answer.status
                if answer.status in (200, 206):
                    mode = "ab" if answer.status == 206 else "wb"
                    handle = await asyncio.to_thread(target.open, mode)
                    try:
                        async for chunk in answer.content.iter_chunked(256 * 1024):
                            await asyncio.to_thread(handle.write, chunk)
                    finally:
                        await asyncio.to_thread(handle.close)
                else:
                    await answer.read()
                return Download(status=answer.status, headers=dict(answer.headers))
        except TimeoutError as exc:
            error = "timeout"
            raise TransportError(f"download {path}: stalled for {self.timeout.total:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
            raise TransportError(f"download {path}: interrupted ({exc})") from exc
        finally:
            self.observer("download", started, time.monotonic() - started, status, error)

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[AiohttpPush]:
        try:
            socket = await self.session().ws_connect(
                self.base_url + path,
                headers=dict(headers),
                heartbeat=30.0,
                ssl=self.ssl,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise PushClosed(f"push channel refused (HTTP {exc.status})") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"push channel: cannot reach {self.base_url} ({exc})") from exc
        try:
            yield AiohttpPush(socket)
        finally:
            await socket.close()
