"""The WebSocket push hub (§7): which devices are connected, and messages to exactly some of them.

Connections are indexed by device, by (site, serial) and by (site, group), so a message for the
devices a profile covers is sent by looking those devices up, never by scanning every
connection (only a global profile reaches every connected device of its site, as it must).
A device's ref is taken when its socket opens: a device an admin moves to another group is
reset, which closes its socket, so a ref never goes stale.

One push channel a device (issue 12: one device held 2,000): a new socket replaces the one the
device holds, which is closed with code 4409 (REPLACED) and a reason once the new one is in
place; its close handshake gets PUSH_REPLACED_CLOSE_S, then its connection is dropped. The old
socket's handler then finds it is no longer the channel (`remove` is False): the device stays
connected throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from aiohttp import web

from server.limits import PUSH_REPLACED_CLOSE_S

log = structlog.get_logger("server.hub")

REPLACED = 4409  # close code of a channel its device replaced by a newer one [ours]
REPLACED_REASON = b"replaced by a newer push channel of this device"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRef:
    uuid: str
    site_uuid: str
    serial: str
    group_uuid: str | None


@dataclass(frozen=True, slots=True)
class HubStatistics:
    devices: int
    connections: int


class Hub:
    def __init__(self) -> None:
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._refs: dict[str, DeviceRef] = {}
        self._by_site: dict[str, set[str]] = {}
        self._by_serial: dict[tuple[str, str], str] = {}
        self._by_group: dict[tuple[str, str], set[str]] = {}
        self._closing: set[web.WebSocketResponse] = set()

    def _index(self, ref: DeviceRef) -> None:
        self._refs[ref.uuid] = ref
        self._by_site.setdefault(ref.site_uuid, set()).add(ref.uuid)
        self._by_serial[(ref.site_uuid, ref.serial)] = ref.uuid
        if ref.group_uuid is not None:
            self._by_group.setdefault((ref.site_uuid, ref.group_uuid), set()).add(ref.uuid)

    def _unindex(self, device_uuid: str) -> None:
        ref = self._refs.pop(device_uuid)
        self._by_site[ref.site_uuid].discard(device_uuid)
        self._by_serial.pop((ref.site_uuid, ref.serial), None)
        if ref.group_uuid is not None:
            self._by_group.get((ref.site_uuid, ref.group_uuid), set()).discard(device_uuid)

    async def add(self, ref: DeviceRef, socket: web.WebSocketResponse) -> bool:
        """Make `socket` the device's channel; True when the device had none (it is now
        connected). A socket it held is closed (REPLACED) after the new one is in place."""
        old = self._sockets.get(ref.uuid)
        if old is not None:
            self._unindex(ref.uuid)
        self._index(ref)
        self._sockets[ref.uuid] = socket
        if old is None:
            return True
        self._closing.add(old)
        try:
            async with asyncio.timeout(PUSH_REPLACED_CLOSE_S):
                await old.close(code=REPLACED, message=REPLACED_REASON)
        except TimeoutError:
            log.info("hub.replaced_close_timed_out", device=ref.uuid)
        finally:
            self._closing.discard(old)
        log.info("hub.channel_replaced", device=ref.uuid)
        return False

    def remove(self, device_uuid: str, socket: web.WebSocketResponse) -> bool:
        """Forget `socket`; True when it was the device's channel (the device is now
        disconnected), False when a newer one had replaced it."""
        if self._sockets.get(device_uuid) is not socket:
            return False
        del self._sockets[device_uuid]
        self._unindex(device_uuid)
        return True

    def connected(self, device_uuid: str) -> bool:
        return device_uuid in self._sockets

    def ref(self, device_uuid: str) -> DeviceRef | None:
        return self._refs.get(device_uuid)

    def in_site(self, site_uuid: str) -> set[str]:
        return set(self._by_site.get(site_uuid, ()))

    def by_serials(self, site_uuid: str, serials: Iterable[str]) -> set[str]:
        found = (self._by_serial.get((site_uuid, s)) for s in serials)
        return {u for u in found if u is not None}

    def by_groups(self, site_uuid: str, groups: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for group in groups:
            found |= self._by_group.get((site_uuid, group), set())
        return found

    async def send(self, device_uuids: Iterable[str], message: dict[str, str]) -> int:
        """Send `message` to every socket of these devices; the number of devices reached."""
        reached = 0
        for device_uuid in set(device_uuids):
            socket = self._sockets.get(device_uuid)
            if socket is None:
                continue
            try:
                await socket.send_json(message)
            except (ConnectionError, RuntimeError) as exc:
                log.info("hub.send_failed", device=device_uuid, error=str(exc))
                continue
            reached += 1
        return reached

    async def close(self, device_uuids: Iterable[str], message: str) -> None:
        for device_uuid in set(device_uuids):
            socket = self._sockets.get(device_uuid)
            if socket is not None:
                await socket.close(code=4401, message=message.encode())

    async def close_all(self) -> None:
        await asyncio.gather(
            *(
                s.close(code=1001, message=b"server shutdown")
                for s in [*self._sockets.values(), *self._closing]
            ),
            return_exceptions=True,
        )

    def statistics(self) -> HubStatistics:
        """`connections` counts replaced sockets still closing too."""
        return HubStatistics(
            devices=len(self._sockets), connections=len(self._sockets) + len(self._closing)
        )
