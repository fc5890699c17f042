"""The agent's clocks: the only place that reads time; every sleep and timestamp goes through one.

- `SystemClock`: wall time and real sleeps.
- `FakeClock`: time moves by `advance()`, or jumps by itself when every task waits (autojump);
  sleepers wake in deadline order (tests).
- `ScaledClock(rate)`: time runs `rate` times faster than real time (the simulator); its waits
  on a Flag share one loop timer (`_Waits`: a heap of deadlines), so a fleet of 50,000 sleeping
  agents holds 50,000 heap entries, not 50,000 timers and timeout objects.

`wait_for(event, seconds)` is the one wait a sleeping agent makes: until the event is set or the
time is up, with no task of its own (a timer that cancels the waiting task, as
`asyncio.timeout`; on a FakeClock, an entry in its heap). `Flag` is the event an agent waits on:
asyncio.Event's methods without its 600-byte deque per instance.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Protocol


class Waitable(Protocol):
    """What `wait_for` waits on: an asyncio.Event or a Flag."""

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class Flag:
    """asyncio.Event's `set`, `clear`, `is_set` and `wait` for thousands of agents: slotted, and
    the list of waiters exists only while someone waits (an Event allocates a deque up front).
    `wait()` returns a future, not a coroutine. Loop-bound like an Event, once waited on."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def wait(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[None]:
        """A future done once the flag is set (at once if it is), on `loop` (the running loop
        if None: a caller that knows it saves the lookup, see `ScaledClock._shared`)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._set:
            future.set_result(None)
            return future
        waiters = self._waiters
        if waiters is None:
            self._waiters = [future]
        elif len(waiters) == 1 and waiters[0].done():
            waiters[0] = future  # the usual: one waiter, whose wait ended (its time came)
        else:
            live = [w for w in waiters if not w.done()]  # drop ended and cancelled waits
            live.append(future)
            self._waiters = live
        return future


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time, epoch milliseconds (for timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds, for measuring durations."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait_for(self, event: Waitable, seconds: float) -> bool:
        """Wait until `event` is set or `seconds` passed on this clock; returns whether the
        event is set (at once if it already was). Creates no task."""
        ...

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

    async def wait_for(self, event: Waitable, seconds: float) -> bool:
        if event.is_set():
            return True
        with suppress(TimeoutError):
            async with asyncio.timeout(_loop_delay(seconds)):
                await event.wait()
        return event.is_set()


class _Waits:
    """Many timed waits on one loop timer: a heap of (deadline in loop time, order, future); the
    timer is set for the earliest deadline, and wakes every due future (set to None: the waiter
    then reads its Flag). A future done otherwise (its Flag was set, or its task cancelled) stays
    in the heap until its deadline and is skipped then."""

    __slots__ = ("_at", "_handle", "_heap", "_order", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()  # the thread running `loop`
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def add(self, when: float, future: asyncio.Future[None]) -> None:
        heapq.heappush(self._heap, (when, next(self._order), future))
        if when < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self.loop.call_at(when, self._fire)
            self._at = when

    def _fire(self) -> None:
        # what the timer was set for is due, even if the loop's clock reads a hair earlier
        # (uvloop's timers and time() are in whole milliseconds): no re-arming spin
        heap, now = self._heap, max(self.loop.time(), self._at)
        while heap and heap[0][0] <= now:
            future = heapq.heappop(heap)[2]
            if not future.done():
                future.set_result(None)
        if heap:
            self._at = heap[0][0]
            self._handle = self.loop.call_at(self._at, self._fire)
        else:
            self._handle, self._at = None, math.inf


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
        self._waits: _Waits | None = None  # made on the first wait, bound to that loop

    def now_ms(self) -> int:
        return self._origin_ms + int((time.monotonic() - self._origin_real) * self.rate * 1000)

    def monotonic(self) -> float:
        return (time.monotonic() - self._origin_real) * self.rate

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.rate)

    async def wait_for(self, event: Waitable, seconds: float) -> bool:
        """A Flag with a finite wait: an entry in the clock's one timer heap (no timer, no
        timeout object of its own); anything else, or on another loop: asyncio.timeout."""
        if event.is_set():
            return True
        delay = _loop_delay(seconds / self.rate)
        if delay is not None and isinstance(event, Flag):
            waits = self._shared()
            if waits is not None:
                loop = waits.loop
                future = event.wait(loop)
                waits.add(loop.time() + delay, future)
                await future
                return event.is_set()
        with suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()
        return event.is_set()

    def _shared(self) -> _Waits | None:
        """The timer heap of the running loop, made on first use and made again once that
        loop is closed (None for a clock used on another loop while its first one lives: it
        waits the plain way there).

        The running loop is not looked up while the heap's loop runs in this very thread: a
        thread runs one loop at a time, so that loop is the running one. (On CPython 3.11
        asyncio.get_running_loop() is a getpid() system call, its fork check: done for every
        wait it was 9 % of a simulated fleet's CPU, measured with py-spy --native.)"""
        waits: _Waits | None = getattr(self, "_waits", None)  # a subclass may skip __init__
        if waits is not None and waits.thread == threading.get_ident() and waits.loop.is_running():
            return waits
        loop = asyncio.get_running_loop()
        if waits is None or waits.loop.is_closed():
            waits = self._waits = _Waits(loop)
        return waits if waits.loop is loop else None


def _loop_delay(seconds: float) -> float | None:
    """The delay for asyncio.timeout. (Each real clock writes its wait out: a shared helper
    coroutine would be one more frame per waiting agent.)"""
    return None if seconds == math.inf else max(0.0, seconds)


class FakeClock:
    """Deterministic time for tests (after trio's MockClock).

    Time moves only by `advance()` or, with `autojump_threshold` set, by itself. Sleepers (a
    `sleep`, or a `wait_for` until its event comes) wait in a heap of (deadline, order of
    arrival); moving time wakes every due sleeper, earliest deadline first and equal deadlines in
    the order they began. A cancelled sleep, or a wait whose event came, is forgotten at once.
    Time is kept in integer nanoseconds, so advancing 0.05 twice reaches a 0.1 deadline exactly.

    Autojump: once the event loop has had nothing ready to run for a few consecutive turns
    (each turn also polls the selector, so I/O already arrived counts as work), and then for
    `autojump_threshold` real seconds during which no sleep began or ended, the clock jumps to
    the earliest deadline. With 0 it jumps as soon as every task waits. Like trio, a task waiting
    on a thread or on a socket that has not answered yet counts as waiting: use autojump for code
    whose waits are on this clock, and `advance()` (or a threshold) around real I/O. Idleness is
    read from the loop's ready queue (CPython's `_ready`); on a loop without one the clock jumps
    after the settling turns alone. A clock left without sleepers stops its jumper at once; two
    autojumping clocks that both have sleepers in one loop keep each other from ever seeing it
    idle, so give one loop one autojumping clock at a time.
    """

    SETTLE_TURNS = 5

    def utc_offset_minutes(self) -> int:
        return 0

    def __init__(
        self, start_ms: int = 1_790_000_000_000, *, autojump_threshold: float | None = None
    ) -> None:
        self._start_ms = start_ms
        self._now_ns = 0
        self._heap: list[tuple[float, int, _Waiter]] = []
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
            self._leave(future)

    async def wait_for(self, event: Waitable, seconds: float) -> bool:
        """The waiting task's deadline sits in the heap like a sleep's; when time reaches it,
        an `asyncio.timeout` scope (a loop-time timer that never fires by itself) is moved to
        now, which cancels the wait as asyncio.timeout does."""
        if event.is_set():
            return True
        if seconds <= 0:
            await asyncio.sleep(0)
            return event.is_set()
        alarm = _Alarm()
        deadline = math.inf if seconds == math.inf else self._now_ns + _ns(seconds)
        heapq.heappush(self._heap, (deadline, next(self._order), alarm))
        self._live += 1
        self._changed()
        self._start_jumper(asyncio.get_running_loop())
        try:
            with suppress(TimeoutError):
                async with asyncio.timeout(None) as scope:
                    if not alarm.done():
                        alarm.scope = scope
                        await event.wait()
        finally:
            alarm.scope = None
            self._leave(alarm)
        return event.is_set()

    def _leave(self, waiter: _Waiter) -> None:
        """A sleep or wait ended: if time did not wake it (it was cancelled or its event came),
        it stops counting as a sleeper at once."""
        if not waiter.done() or waiter.cancelled():
            waiter.cancel()
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
        """Return after SETTLE_TURNS consecutive loop turns in which nothing else was ready, or
        as soon as nothing sleeps on this clock (a clock whose sleepers all left, e.g. when its
        agent stopped, must not keep another clock's jumper from seeing an idle loop)."""
        quiet = 0
        while quiet < self.SETTLE_TURNS and self._live:
            await asyncio.sleep(0)  # one turn: the selector is polled, ready callbacks run
            ready = getattr(loop, "_ready", None)
            quiet = quiet + 1 if not ready else 0


class _Alarm:
    """A `wait_for` in FakeClock's heap (lighter than a future and its callback): time reaching
    it expires the wait's timeout scope, which cancels the wait as asyncio.timeout does."""

    __slots__ = ("_done", "scope")

    def __init__(self) -> None:
        self._done = False
        self.scope: asyncio.Timeout | None = None  # set while the wait is inside its scope

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False  # the wait left early: `cancel()` only marks it done

    def cancel(self) -> bool:
        self._done = True
        return True

    def set_result(self, result: None) -> None:
        self._done = True
        if self.scope is not None:
            self.scope.reschedule(asyncio.get_running_loop().time())


_Waiter = asyncio.Future[None] | _Alarm


def _ns(seconds: float) -> int:
    """Whole nanoseconds (raises ValueError for NaN)."""
    return round(seconds * 1_000_000_000)
