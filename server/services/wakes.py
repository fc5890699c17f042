"""wakeToApply (§5): at a profile's start time, wake its sleeping devices over the push channel.

A heap of (due time, site, profile); one task sleeps until the next is due. At the due time the
profile is re-read (it may have changed or gone), the devices it covers that are in `standby`
and connected get `{"type": "wake"}`, and their `wake_sent` is stored (presence `waking_up`).
On start-up every enabled wakeToApply profile whose start is still ahead is scheduled again.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass
from typing import Any

import structlog

from server.clock import Clock
from server.domain.presence import Presence, presence
from server.domain.profiles import start_of, wakes_to_apply
from server.services.hub import Hub
from server.store import agent as agent_store
from server.store import profiles as profile_store
from server.store.db import Database

log = structlog.get_logger("server.wakes")


@dataclass(frozen=True, slots=True)
class WakeStatistics:
    scheduled: int  # profiles waiting for their start
    sent: int  # wakes sent since start


class WakeScheduler:
    def __init__(self, db: Database, hub: Hub, clock: Clock) -> None:
        self.db = db
        self.hub = hub
        self.clock = clock
        self._heap: list[tuple[int, str, str]] = []
        self._changed = asyncio.Event()
        self._sent = 0

    def schedule(self, site_uuid: str, profile_uuid: str, doc: dict[str, Any]) -> None:
        if not wakes_to_apply(doc):
            return
        due = start_of(doc) or self.clock.now_ms()
        heapq.heappush(self._heap, (due, site_uuid, profile_uuid))
        self._changed.set()

    async def load(self) -> None:
        now = self.clock.now_ms()
        for site_uuid, profile_uuid, doc in await profile_store.wake_profiles(self.db):
            start = start_of(doc)
            if start is not None and start > now:
                self.schedule(site_uuid, profile_uuid, doc)

    async def run(self) -> None:
        while True:
            self._changed.clear()
            if self._heap:
                delay = (self._heap[0][0] - self.clock.now_ms()) / 1000
                if delay <= 0:
                    _, site_uuid, profile_uuid = heapq.heappop(self._heap)
                    await self.wake(site_uuid, profile_uuid)
                    continue
            try:
                async with asyncio.timeout(min(delay, 60.0) if self._heap else None):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def wake(self, site_uuid: str, profile_uuid: str) -> int:
        now = self.clock.now_ms()
        rows = await profile_store.wake_candidates(self.db, site_uuid, profile_uuid)
        sleepers = [
            r["uuid"]
            for r in rows
            if self.hub.connected(r["uuid"])
            and presence(
                last_checkin=r["last_checked_in"],
                interval_s=r["interval_s"],
                sleeping=bool(r["sleeping"]),
                wake_sent=r["wake_sent"],
                now=now,
            )
            == Presence.STANDBY
        ]
        if sleepers:
            await agent_store.mark_woken(self.db, sleepers, now)
            await self.hub.send(sleepers, {"type": "wake"})
        self._sent += len(sleepers)
        log.info("wakes.sent", profile=profile_uuid, devices=len(sleepers))
        return len(sleepers)

    def statistics(self) -> WakeStatistics:
        return WakeStatistics(scheduled=len(self._heap), sent=self._sent)
