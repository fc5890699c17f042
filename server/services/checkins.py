"""Check-ins in memory, written to SQLite in batches (the device API's hot path).

Theory of operation: each device's last report lives in a `DeviceState` (loaded from SQLite on
first use). A check-in that changes nothing but the time is acknowledged at once and written
with the next periodic batch (every `flush_interval_s`); one that changes anything else
(enrolment, client version, sleeping, interval, build, power, network) waits for the batch that
carries it (group commit: every check-in waiting at that moment shares one transaction). So a
heartbeat never costs a row write of its own, and an acknowledged change survives a crash.
Push-channel changes (rtcEnabled, lastDisconnected) ride on the same batches. Admin reads may
show `lastCheckedIn` and `rtcEnabled` up to `flush_interval_s` old.

A row must never block the others (issue 12): values are validated before a check-in is
acknowledged (server.domain.device_reports), and should a row still fail, the batch is written
again row by row in one transaction; each row that fails alone is dropped (its check-in answers
50000; one `checkins.rows_dropped` event a batch) and never re-queued. Only a failure of the
database itself (busy, disk) keeps the rows for the next batch and answers 503. One flush runs
at a time, in a task of its own: when the flush loop is cancelled at shutdown, the flush it began
still finishes, and the app's final `flush()` waits for it, then writes whatever else was
acknowledged.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import structlog

from server.clock import Clock
from server.errors import Internal, Unavailable
from server.store import agent as agent_store
from server.store.agent import CheckinWrite, RowFailure
from server.store.db import Database

log = structlog.get_logger("server.checkins")


@dataclass(frozen=True, slots=True)
class CheckinStatistics:
    cached_devices: int  # devices whose last report is held in memory
    pending: int  # check-ins and channel changes waiting for the next batch
    batches: int  # batches written since start
    dropped: int = 0  # rows that could not be written, dropped since start


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
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._urgent = asyncio.Event()
        self._batches = 0
        self._dropped = 0
        self._flushing: asyncio.Task[None] | None = None

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
        self._waiters.setdefault(state.uuid, []).append(waiter)
        self._urgent.set()
        await waiter

    def statistics(self) -> CheckinStatistics:
        return CheckinStatistics(
            cached_devices=len(self._devices),
            pending=len(self._pending) + len(self._channels),
            batches=self._batches,
            dropped=self._dropped,
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
        """Write what is pending now; a flush already running is waited for first."""
        while (running := self._flushing) is not None:
            await self._finish(running)
        if not self._pending and not self._waiters and not self._channels:
            return
        task = asyncio.create_task(self._write_pending(), name="checkin-batch")
        self._flushing = task
        await self._finish(task)

    async def _finish(self, task: asyncio.Task[None]) -> None:
        """Wait for a batch; a cancelled caller leaves it running (the next flush waits for it)."""
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._flushing is task:
                self._flushing = None

    async def _write_pending(self) -> None:
        batch = list(self._pending.values())
        channels = list(self._channels.values())
        waiters, self._waiters = self._waiters, {}
        self._pending.clear()
        self._channels.clear()
        try:
            await agent_store.write_batch(self.db, batch, channels)
        except Unavailable as exc:  # the database is busy: every row waits for the next batch
            self._keep(batch, channels, waiters, exc)
            return
        except Exception as exc:  # noqa: BLE001 - some row cannot be written: find it below
            log.warning("checkins.batch_failed", rows=len(batch), error=repr(exc))
            try:
                failures = await agent_store.write_rows(self.db, batch, channels)
            except Exception as exc:  # noqa: BLE001 - the database itself failed
                self._keep(batch, channels, waiters, exc)
                return
            self._drop(failures, waiters)
        self._batches += 1
        for device_waiters in waiters.values():
            for waiter in device_waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _keep(
        self,
        batch: list[CheckinWrite],
        channels: list[tuple[str, bool, int]],
        waiters: dict[str, list[asyncio.Future[None]]],
        exc: Exception,
    ) -> None:
        """The database failed as a whole: rows wait for the next batch (a newer check-in of the
        same device replaces its row), waiting check-ins answer 503."""
        log.error("checkins.flush_failed", rows=len(batch), error=repr(exc))
        for device_write in batch:
            self._pending.setdefault(device_write.device_uuid, device_write)
        for change in channels:
            self._channels.setdefault(change[0], change)
        for device_waiters in waiters.values():
            for waiter in device_waiters:
                if not waiter.done():
                    waiter.set_exception(Unavailable("could not store the check-in", retry_after=5))

    def _drop(
        self, failures: list[RowFailure], waiters: dict[str, list[asyncio.Future[None]]]
    ) -> None:
        """Rows that failed alone are gone: their check-ins answer 50000, their devices are
        reloaded from the database on next use (the cache held the values not written)."""
        if not failures:
            return
        self._dropped += len(failures)
        devices = list(dict.fromkeys(f.device_uuid for f in failures))
        log.error(
            "checkins.rows_dropped",
            rows=len(failures),
            devices=devices[:20],
            error=failures[0].error,
        )
        for device_uuid in devices:
            self._devices.pop(device_uuid, None)
            for waiter in waiters.pop(device_uuid, []):
                if not waiter.done():
                    waiter.set_exception(
                        Internal(
                            "the check-in could not be stored; the server log has the details "
                            "under this response's uq"
                        )
                    )
