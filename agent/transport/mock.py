"""MockTransport(handler): requests go to a function, for tests of the agent without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.errors import PushClosed
from agent.protocol import Request, Response
from agent.transport.base import Download


class MockPush:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        while (message := await self.queue.get()) is not None:
            yield message
        raise PushClosed("mock push channel closed")


class MockTransport:
    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler
        self.sent: list[Request] = []
        self.push = MockPush()

    async def send(self, request: Request) -> Response:
        self.sent.append(request)
        return await self.handler(request)

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        request_headers = dict(headers)
        if offset:
            request_headers["Range"] = f"bytes={offset}-"
        answer = await self.send(
            Request(method="GET", path=path, headers=request_headers, name="download")
        )
        if answer.status in (200, 206):
            with target.open("ab" if answer.status == 206 else "wb") as handle:
                handle.write(answer.body)
        return Download(status=answer.status, headers=answer.headers)

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[MockPush]:
        yield self.push
