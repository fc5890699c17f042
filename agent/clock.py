"""The agent's clocks: the only place that reads time; every sleep and timestamp goes through one.

- `SystemClock`: wall time and real sleeps.
- `FakeClock`: time moves by `advance()`, or jumps by itself when every task waits (autojump);
  sleepers wake in deadline order (tests).
- `ScaledClock(rate)`: time runs `rate` times faster than real time (the simulator).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
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
    """Deterministic time for tests (after trio's MockClock).

    Time moves only by `advance()` or, with `autojump_threshold` set, by itself. Sleepers wait in
    a heap of (deadline, order of arrival); moving time wakes every due sleeper, earliest deadline
    first and equal deadlines in the order they began. A cancelled sleep is forgotten at once.
    Time is kept in integer nanoseconds, so advancing 0.05 twice reaches a 0.1 deadline exactly.

    Autojump: once the event loop has had nothing ready to run for a few consecutive turns
    (each turn also polls the selector, so I/O already arrived counts as work), and then for
    `autojump_threshold` real seconds during which no sleep began or ended, the clock jumps to
    the earliest deadline. With 0 it jumps as soon as every task waits. Like trio, a task waiting
    on a thread or on a socket that has not answered yet counts as waiting: use autojump for code
    whose waits are on this clock, and `advance()` (or a threshold) around real I/O. Idleness is
    read from the loop's ready queue (CPython's `_ready`); on a loop without one the clock jumps
    after the settling turns alone.
    """

    SETTLE_TURNS = 5

    def utc_offset_minutes(self) -> int:
        return 0

    def __init__(
        self, start_ms: int = 1_790_000_000_000, *, autojump_threshold: float | None = None
    ) -> None:
        self._start_ms = start_ms
        self._now_ns = 0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._live = 0  # sleepers waiting (the heap also holds cancelled ones until popped)
        self._version = 0  # bumped whenever a sleep begins or ends, or time moves
        self._threshold: float | None = None
        self._jumper: asyncio.Task[None] | None = None
        self.observers: list[Callable[[], None]] = []  # called on every change (tests wait on it)
        self.autojump_threshold = autojump_threshold

    # -- the Clock protocol --------------------------------------------------------------------

    def now_ms(self) -> int:
        return self._start_ms + self._now_ns // 1_000_000

    def monotonic(self) -> float:
        return self._now_ns / 1e9

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        deadline = math.inf if seconds == math.inf else self._now_ns + _ns(seconds)
        heapq.heappush(self._heap, (deadline, next(self._order), future))
        self._live += 1
        self._changed()
        self._start_jumper(loop)
        try:
            await future
        finally:
            if not future.done() or future.cancelled():  # cancelled, not woken
                future.cancel()
                self._live -= 1
                self._compact()
                self._changed()

    # -- moving time ---------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` and wake every sleeper now due."""
        if not 0 <= seconds < math.inf:
            raise ValueError(f"cannot advance by {seconds!r} seconds")
        self._now_ns += _ns(seconds)
        self._wake_due()
        self._changed()

    @property
    def autojump_threshold(self) -> float | None:
        """None: time moves only by `advance()`; else real seconds of idleness before a jump."""
        return self._threshold

    @autojump_threshold.setter
    def autojump_threshold(self, value: float | None) -> None:
        if value is not None and not 0 <= value < math.inf:
            raise ValueError(f"autojump_threshold must be None or >= 0, not {value!r}")
        self._threshold = value
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the next sleep starts the jumper
        self._start_jumper(loop)

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting."""
        return self._live

    def next_deadline(self) -> float | None:
        """Seconds from now until the earliest pending sleep ends (tests inspect backoff)."""
        self._drop_cancelled()
        return (self._heap[0][0] - self._now_ns) / 1e9 if self._heap else None

    # -- internals -----------------------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1
        for observer in list(self.observers):
            observer()

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        """Rebuild the heap without cancelled sleeps once they outnumber the live ones."""
        if len(self._heap) > 2 * self._live + 16:
            self._heap = [entry for entry in self._heap if not entry[2].done()]
            heapq.heapify(self._heap)

    def _wake_due(self) -> None:
        while self._heap and self._heap[0][0] <= self._now_ns:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                future.set_result(None)
                self._live -= 1

    def _start_jumper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._threshold is None or self._live == 0:
            return
        if self._jumper is not None and not self._jumper.done() and self._jumper.get_loop() is loop:
            return
        # Owned by the clock and bounded by its sleepers: it ends when no finite sleep waits.
        self._jumper = loop.create_task(self._autojump(loop), name="fake-clock-autojump")

    async def _autojump(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._threshold is not None:
            self._drop_cancelled()
            if not self._heap or self._heap[0][0] == math.inf:
                return  # nothing to jump to; the next sleep starts a new jumper
            version = self._version
            await self._settle(loop)
            if self._threshold:
                await asyncio.sleep(self._threshold)
                await self._settle(loop)
                if self._version != version:
                    continue  # something slept or woke meanwhile: not idle, start over
            self._drop_cancelled()
            if self._heap and self._heap[0][0] != math.inf:
                self._now_ns = max(self._now_ns, int(self._heap[0][0]))
                self._wake_due()
                self._changed()

    async def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return after SETTLE_TURNS consecutive loop turns in which nothing else was ready."""
        quiet = 0
        while quiet < self.SETTLE_TURNS:
            await asyncio.sleep(0)  # one turn: the selector is polled, ready callbacks run
            ready = getattr(loop, "_ready", None)
            quiet = quiet + 1 if not ready else 0


def _ns(seconds: float) -> int:
    """Whole nanoseconds (raises ValueError for NaN)."""
    return round(seconds * 1_000_000_000)
