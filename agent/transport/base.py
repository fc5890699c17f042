"""The Transport protocol, and the observer that measures every request (no-op on a rig)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from agent.protocol import Request, Response


class Observer(Protocol):
    def __call__(
        self, name: str, started: float, duration: float, status: int, error: str | None
    ) -> None: ...


def no_observer(name: str, started: float, duration: float, status: int, error: str | None) -> None:
    return None


class PushChannel(Protocol):
    def messages(self) -> AsyncIterator[dict[str, Any]]: ...


class Transport(Protocol):
    async def send(self, request: Request) -> Response:
        """Send; raise TransportError when no HTTP answer arrived."""
        ...

    def open_push(
        self, path: str, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[PushChannel]:
        """Open the WebSocket; raise TransportError (PushClosed when it closes)."""
        ...
