"""MockTransport(handler): requests go to a function, for tests of the agent without sockets.

It runs the code AiohttpTransport runs around the socket: the body is encoded by
`protocol.encode_body` (what would go on the wire is kept in `sent`), push messages are decoded by
`protocol.decode_push`, and every exchange is timed on the clock and told to the observer. A
handler that raises TransportError stands for a network failure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import protocol
from agent.clock import Clock, SystemClock
from agent.errors import AgentError, PushClosed
from agent.protocol import Request, Response
from agent.transport.base import Download, Observer, Sink, no_observer, report

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """A request as the mock received it, and the headers and body bytes a socket would carry."""

    request: Request
    headers: Mapping[str, str]
    body: bytes | None


class MockPush:
    """A push channel fed by the test: `send()` a message (JSON-encoded, as a server would),
    `send_raw()` any text, `close()` to end it with PushClosed (with the close `code` given)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.close_code: int | None = None

    def send(self, message: Mapping[str, Any]) -> None:
        self.queue.put_nowait(json.dumps(message))

    def send_raw(self, text: str) -> None:
        self.queue.put_nowait(text)

    def close(self, code: int | None = None) -> None:
        self.close_code = code
        self.queue.put_nowait(None)

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        while (data := await self.queue.get()) is not None:
            message = protocol.decode_push(data)
            if message is not None:
                yield message
        raise PushClosed("mock push channel closed", code=self.close_code)


class MockTransport:
    def __init__(
        self, handler: Handler, *, clock: Clock | None = None, observer: Observer = no_observer
    ) -> None:
        self.handler = handler
        self.clock = clock or SystemClock()
        self.observer = observer
        self.sent: list[Sent] = []
        self.push = MockPush()

    async def send(self, request: Request) -> Response:
        body = protocol.encode_body(request)
        self.sent.append(
            Sent(request=request, headers=protocol.wire_headers(request, body), body=body)
        )
        status, error = 0, None
        started = self.clock.monotonic()
        try:
            answer = await self.handler(request)
            status = answer.status
            return answer
        except AgentError as exc:
            error = type(exc).__name__
            raise
        finally:
            report(
                self.observer,
                self.clock,
                name=request.name or request.path,
                intended=request.intended,
                started=started,
                status=status,
                error=error,
            )

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        answer = await self._get(path, protocol.resume_from(headers, offset))
        if answer.status in (200, 206):
            with target.open("ab" if answer.status == 206 else "wb") as handle:
                handle.write(answer.body)
        return Download(status=answer.status, headers=answer.headers)

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        answer = await self._get(path, protocol.resume_from(headers, sink.size))
        if answer.status == 200:
            sink.truncate()
        if answer.status in (200, 206):
            sink.write(answer.body)
        return Download(status=answer.status, headers=answer.headers)

    async def _get(self, path: str, headers: Mapping[str, str]) -> Response:
        return await self.send(Request(method="GET", path=path, headers=headers, name="download"))

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[MockPush]:
        report(
            self.observer,
            self.clock,
            name="push",
            intended=None,
            started=self.clock.monotonic(),
            status=101,
            error=None,
        )
        yield self.push
