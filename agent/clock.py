"""The agent's clocks: the only place that reads time; every sleep and timestamp goes through one.

- `SystemClock`: wall time and real sleeps.
- `FakeClock`: time moves only by `advance()`; sleepers wake when their deadline passes (tests).
- `ScaledClock(rate)`: time runs `rate` times faster than real time (the simulator).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time, epoch milliseconds (for timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds, for measuring durations."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def utc_offset_minutes(self) -> int:
        """The device's local time offset, for daily windows."""
        ...


class SystemClock:
    def utc_offset_minutes(self) -> int:
        return (time.localtime().tm_gmtoff or 0) // 60

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Time that runs `rate` times faster than real time, from `start_ms`."""

    def utc_offset_minutes(self) -> int:
        return 0

    def __init__(self, rate: float, start_ms: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._origin_real = time.monotonic()
        self._origin_ms = start_ms if start_ms is not None else time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return self._origin_ms + int((time.monotonic() - self._origin_real) * self.rate * 1000)

    def monotonic(self) -> float:
        return (time.monotonic() - self._origin_real) * self.rate

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.rate)


class FakeClock:
    """Deterministic time for tests: `advance()` moves it and wakes the sleepers that are due."""

    def utc_offset_minutes(self) -> int:
        return 0

    def __init__(self, start_ms: int = 1_790_000_000_000) -> None:
        self._now = start_ms / 1000
        self._start = self._now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now_ms(self) -> int:
        return int(self._now * 1000)

    def monotonic(self) -> float:
        return self._now - self._start

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, future))
        try:
            await future
        finally:
            self._sleepers = [(t, f) for t, f in self._sleepers if f is not future]

    def advance(self, seconds: float) -> None:
        self._now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self._now and not future.done():
                future.set_result(None)

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """Seconds from now until the earliest pending sleep ends (tests inspect backoff)."""
        pending = [t for t, f in self._sleepers if not f.done()]
        return min(pending) - self._now if pending else None
