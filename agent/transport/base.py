"""The Transport protocol, and the observer that measures every exchange (no-op on a rig).

Every transport times an exchange on the agent's Clock and hands the observer one `Exchange`:
when the agent meant to send (`intended`), when it did (`started`), how long the answer took, and
how it ended. `started - intended` is the agent's own lateness (a busy loop, a late timer), which
a load generator must count against the server's latency rather than hide (coordinated omission).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.clock import Clock
from agent.protocol import Request, Response, slot_setters


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """One request, download or push handshake, as the observer hears it (Clock seconds)."""

    name: str  # the Request's name ("checkin", ...), "download" or "push"
    intended: float  # when the agent meant to send it; = started when it had no plan
    started: float
    duration: float
    status: int  # the HTTP status; 0 when no answer arrived
    error: str | None  # None, "timeout", or the name of the exception that ended it

    @property
    def lateness(self) -> float:
        """How long after the intended time the exchange began."""
        return self.started - self.intended


_EXCHANGE_SETTERS = slot_setters(
    Exchange, "name", "intended", "started", "duration", "status", "error"
)


def exchange(
    name: str, intended: float, started: float, duration: float, status: int, error: str | None
) -> Exchange:
    """`Exchange(name=name, ...)`, made ~3x faster (one a request: see protocol.slot_setters)."""
    value = Exchange.__new__(Exchange)
    set_name, set_intended, set_started, set_duration, set_status, set_error = _EXCHANGE_SETTERS
    set_name(value, name)
    set_intended(value, intended)
    set_started(value, started)
    set_duration(value, duration)
    set_status(value, status)
    set_error(value, error)
    return value


class Observer(Protocol):
    def __call__(self, exchange: Exchange, /) -> None: ...


def no_observer(exchange: Exchange, /) -> None:
    return None


class PushChannel(Protocol):
    def messages(self) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Download:
    """How a download into a file ended: the HTTP status and the headers of the answer."""

    status: int
    headers: Mapping[str, str]


class Sink(Protocol):
    """Where a streamed download goes (a simulated device hashes it instead of keeping it)."""

    @property
    def size(self) -> int:
        """Bytes held: a download into a sink that holds some asks for the rest."""
        ...

    def write(self, chunk: bytes) -> None: ...

    def truncate(self) -> None:
        """Forget what was written (the server sends the whole file again)."""
        ...


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

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        """GET `path` into `sink`: ask for the rest (Range) when the sink holds bytes; on a 206
        append, on a 200 truncate the sink first. Raise TransportError when the connection
        drops (what arrived stays in the sink)."""
        ...

    def open_push(
        self, path: str, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[PushChannel]:
        """Open the WebSocket; raise TransportError (PushClosed when it closes)."""
        ...


def report(
    observer: Observer,
    clock: Clock,
    *,
    name: str,
    intended: float | None,
    started: float,
    status: int,
    error: str | None,
) -> None:
    """Tell `observer` how an exchange that began at `started` ended (now, on `clock`); nothing
    is made for `no_observer` (a rig's or a single agent's transport)."""
    if observer is no_observer:
        return
    observer(
        exchange(
            name,
            started if intended is None else intended,
            started,
            clock.monotonic() - started,
            status,
            error,
        )
    )
