"""The worker's garbage-collector policy: keep CPython's full collections off the event loop.

Why: thousands of agents are long-lived objects (state, transports, schedules, histograms). A
full (generation 2) collection traverses every tracked object, so with 5,000 devices it stopped
the loop for about 0.5 s, and 1.1 s at 10,000: every device's send lag, not the target's
latency. The cure CPython documents for this (`gc.freeze`, the pre-fork server recipe) moves
every object that exists into a permanent generation that no collection traverses.

Policy [ours]: every `interval_s` real seconds, `HeapKeeper` collects the young generations
(so that fresh cyclic garbage is freed, not frozen) and then freezes the survivors. A full
collection then only traverses what was born since the last freeze; it stays short whatever
the fleet's size. The cost: a reference cycle that was already frozen and dies later is never
collected (objects freed by reference counting are freed as usual); `bench/sim_capacity.py`
measures what that costs per device, and a soak run shows whether it stays bounded. At the end of
the run everything is unfrozen, so that a process that runs again (the tests) gets its memory
back.

While it runs, the youngest generation is collected every `YOUNG_THRESHOLD` allocations of
container objects instead of CPython's 700: a check-in allocates ~100 that reference counting
frees at once, so the default collected (and called the timing callback below) every few
check-ins, about 3 % of a worker's CPU (py-spy, bench/sim_rate.py); a young collection
traverses only what survives, so the larger threshold costs little more a collection and
keeps cyclic garbage at most that many objects longer. The thresholds are restored at the end.

The keeper also times every collection (`gc.callbacks`): the report's `generator.gc` says how
many there were per generation and the longest pause, so a stall shows its cause.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("simulator.heap")
FREEZE_INTERVAL_S = 1.0  # real seconds between freezes (measured: 7,500 devices, gen2 11 -> 1)
YOUNG_THRESHOLD = 20_000  # allocations between young collections while the keeper runs


@dataclass(frozen=True, slots=True)
class GcFigures:
    """What the collector did during a run."""

    freezes: int
    collections: tuple[int, int, int]  # per generation
    max_pause_ms: tuple[float, float, float]  # per generation
    frozen_objects: int  # in the permanent generation at the end, before unfreezing

    def to_json(self) -> dict[str, Any]:
        return {
            "freezes": self.freezes,
            "collections": list(self.collections),
            "max_pause_ms": [round(p, 3) for p in self.max_pause_ms],
            "frozen_objects": self.frozen_objects,
        }


class HeapKeeper:
    """Freezes the heap's survivors every `interval_s` and times each collection.

    Use as `async with HeapKeeper(): ...` around the fleet's life; `figures()` after it.
    `interval_s=None` only times collections (nothing is frozen)."""

    def __init__(self, interval_s: float | None = FREEZE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._freezes = 0
        self._counts = [0, 0, 0]
        self._max_pause = [0.0, 0.0, 0.0]
        self._started: float | None = None
        self._frozen_at_end = 0
        self._task: asyncio.Task[None] | None = None
        self._thresholds: tuple[int, int, int] | None = None  # CPython's, while the keeper runs

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        generation = int(info.get("generation", 2))
        pause_ms = (time.perf_counter() - self._started) * 1000.0
        self._started = None
        self._counts[generation] += 1
        if pause_ms > self._max_pause[generation]:
            self._max_pause[generation] = pause_ms

    def freeze(self) -> None:
        """Free the young generations' garbage, then freeze what survives."""
        gc.collect(1)
        gc.freeze()
        self._freezes += 1

    async def _run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.freeze()

    async def __aenter__(self) -> HeapKeeper:
        gc.callbacks.append(self._on_gc)
        self._thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *self._thresholds[1:])
        if self.interval_s is not None:
            self._task = asyncio.create_task(self._run(self.interval_s), name="heap-keeper")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        self._frozen_at_end = gc.get_freeze_count()
        gc.unfreeze()
        log.info(
            "heap.figures",
            freezes=self._freezes,
            collections=self._counts,
            max_pause_ms=[round(p, 1) for p in self._max_pause],
            frozen_objects=self._frozen_at_end,
        )

    def figures(self) -> GcFigures:
        return GcFigures(
            freezes=self._freezes,
            collections=(self._counts[0], self._counts[1], self._counts[2]),
            max_pause_ms=(self._max_pause[0], self._max_pause[1], self._max_pause[2]),
            frozen_objects=self._frozen_at_end,
        )
