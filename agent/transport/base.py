"""The Transport protocol, and the observer that measures every request (no-op on a rig)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Download:
    """How a download into a file ended: the HTTP status and the headers of the answer."""

    status: int
    headers: Mapping[str, str]


class Transport(Protocol):
    async def send(self, request: Request) -> Response:
        """Send; raise TransportError when no HTTP answer arrived."""
        ...

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        """GET `path` into `target`: append from `offset` on a 206, rewrite on a 200.
        Raise TransportError when the connection drops (what arrived stays in `target`)."""
        ...

    def open_push(
        self, path: str, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[PushChannel]:
        """Open the WebSocket; raise TransportError (PushClosed when it closes)."""
        ...
