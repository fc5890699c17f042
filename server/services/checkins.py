"""Check-ins in memory, written to SQLite in batches (the device API's hot path).

Theory of operation: each device's last report lives in a `DeviceState` (loaded from SQLite on
first use). A check-in that changes nothing but the time is acknowledged at once and written
with the next periodic batch (every `flush_interval_s`); one that changes anything else
(enrolment, client version, sleeping, interval, build, power, network) waits for the batch that
carries it (group commit: every check-in waiting at that moment shares one transaction). So a
heartbeat never costs a row write of its own, and an acknowledged change survives a crash.
Push-channel changes (rtcEnabled, lastDisconnected) ride on the same batches. Admin reads may
show `lastCheckedIn` and `rtcEnabled` up to `flush_interval_s` old.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import structlog

from server.clock import Clock
from server.errors import Unavailable
from server.store import agent as agent_store
from server.store.agent import CheckinWrite
from server.store.db import Database

log = structlog.get_logger("server.checkins")


@dataclass(frozen=True, slots=True)
class CheckinStatistics:
    cached_devices: int  # devices whose last report is held in memory
    pending: int  # check-ins and channel changes waiting for the next batch
    batches: int  # batches written since start


@dataclass(slots=True)
class DeviceState:
    uuid: str
    site_uuid: str
    serial: str
    group_uuid: str | None
    enrolled: bool
    client_version: int
    sleeping: bool
    interval_s: int
    report: str
    inventory_hash: str | None
    last_checked_in: int | None
    reported_hash: str | None = None  # inventoryHash of the latest check-in


class Checkins:
    def __init__(self, db: Database, clock: Clock, flush_interval_s: float = 2.0) -> None:
        self.db = db
        self.clock = clock
        self.flush_interval_s = flush_interval_s
        self._devices: dict[str, DeviceState] = {}
        self._pending: dict[str, CheckinWrite] = {}
        self._channels: dict[str, tuple[str, bool, int]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._urgent = asyncio.Event()
        self._batches = 0

    async def device(self, device_uuid: str) -> DeviceState | None:
        state = self._devices.get(device_uuid)
        if state is not None:
            return state
        row = await agent_store.device_row(self.db, device_uuid)
        if row is None:
            return None
        state = self._devices.get(device_uuid)  # another request may have loaded it meanwhile
        if state is None:
            state = DeviceState(
                uuid=row["uuid"],
                site_uuid=row["site_uuid"],
                serial=row["serial_no"],
                group_uuid=row["group_uuid"],
                enrolled=row["enrolled"] is not None,
                client_version=row["client_version"],
                sleeping=bool(row["sleeping"]),
                interval_s=row["interval_s"],
                report=row["report"],
                inventory_hash=row["inventory_hash"],
                last_checked_in=row["last_checked_in"],
            )
            self._devices[device_uuid] = state
        return state

    def forget(self, device_uuids: list[str]) -> None:
        """Drop cached devices (re-saved or moved by an admin); they are reloaded on next use."""
        for device_uuid in device_uuids:
            self._devices.pop(device_uuid, None)
            self._pending.pop(device_uuid, None)

    async def record(
        self,
        state: DeviceState,
        *,
        client_version: int,
        sleeping: bool,
        interval_s: int,
        report: dict[str, object],
    ) -> None:
        now = self.clock.now_ms()
        report_json = json.dumps(report, sort_keys=True, separators=(",", ":"))
        changed = (
            not state.enrolled
            or state.client_version != client_version
            or state.sleeping != sleeping
            or state.interval_s != interval_s
            or state.report != report_json
        )
        state.enrolled = True
        state.client_version, state.sleeping, state.interval_s = (
            client_version,
            sleeping,
            interval_s,
        )
        state.report, state.last_checked_in = report_json, now
        self._pending[state.uuid] = CheckinWrite(
            device_uuid=state.uuid,
            at=now,
            client_version=client_version,
            sleeping=sleeping,
            interval_s=interval_s,
            report=report_json,
        )
        if not changed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._urgent.set()
        await waiter

    def statistics(self) -> CheckinStatistics:
        return CheckinStatistics(
            cached_devices=len(self._devices),
            pending=len(self._pending) + len(self._channels),
            batches=self._batches,
        )

    def channel(self, device_uuid: str, connected: bool) -> None:
        """The device's push channel opened or closed; written with the next batch."""
        self._channels[device_uuid] = (device_uuid, connected, self.clock.now_ms())

    async def run(self) -> None:
        """Flush loop; owned by the application's lifecycle."""
        while True:
            try:
                async with asyncio.timeout(self.flush_interval_s):
                    await self._urgent.wait()
            except TimeoutError:
                pass
            self._urgent.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending and not self._waiters and not self._channels:
            return
        batch = list(self._pending.values())
        channels = list(self._channels.values())
        waiters, self._waiters = self._waiters, []
        self._pending.clear()
        self._channels.clear()
        try:
            await agent_store.write_batch(self.db, batch, channels)
        except Exception as exc:  # noqa: BLE001 - any store failure is reported to every waiter
            log.error("checkins.flush_failed", rows=len(batch), error=repr(exc))
            for device_write in batch:
                self._pending.setdefault(device_write.device_uuid, device_write)
            for change in channels:
                self._channels.setdefault(change[0], change)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(Unavailable("could not store the check-in", retry_after=5))
            return
        self._batches += 1
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
