"""The WebSocket push hub (§7): which devices are connected, and messages to exactly some of them.

Connections are indexed by device, by (site, serial) and by (site, group), so a message for the
devices a profile covers is sent by looking those devices up, never by scanning every
connection (only a global profile reaches every connected device of its site, as it must).
A device's ref is taken when its first socket opens: a device an admin moves to another group
is reset, which closes its sockets, so a ref never goes stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from aiohttp import web

log = structlog.get_logger("server.hub")


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
        self._sockets: dict[str, set[web.WebSocketResponse]] = {}
        self._refs: dict[str, DeviceRef] = {}
        self._by_site: dict[str, set[str]] = {}
        self._by_serial: dict[tuple[str, str], str] = {}
        self._by_group: dict[tuple[str, str], set[str]] = {}

    def add(self, ref: DeviceRef, socket: web.WebSocketResponse) -> None:
        if ref.uuid not in self._refs:
            self._refs[ref.uuid] = ref
            self._by_site.setdefault(ref.site_uuid, set()).add(ref.uuid)
            self._by_serial[(ref.site_uuid, ref.serial)] = ref.uuid
            if ref.group_uuid is not None:
                self._by_group.setdefault((ref.site_uuid, ref.group_uuid), set()).add(ref.uuid)
        self._sockets.setdefault(ref.uuid, set()).add(socket)

    def remove(self, device_uuid: str, socket: web.WebSocketResponse) -> bool:
        """Forget one socket; True when it was the device's last one."""
        sockets = self._sockets.get(device_uuid)
        if sockets is None:
            return False
        sockets.discard(socket)
        if sockets:
            return False
        del self._sockets[device_uuid]
        ref = self._refs.pop(device_uuid)
        self._by_site[ref.site_uuid].discard(device_uuid)
        self._by_serial.pop((ref.site_uuid, ref.serial), None)
        if ref.group_uuid is not None:
            self._by_group.get((ref.site_uuid, ref.group_uuid), set()).discard(device_uuid)
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
            for socket in list(self._sockets.get(device_uuid, ())):
                try:
                    await socket.send_json(message)
                except (ConnectionError, RuntimeError) as exc:
                    log.info("hub.send_failed", device=device_uuid, error=str(exc))
                    continue
                reached += 1
        return reached

    async def close(self, device_uuids: Iterable[str], message: str) -> None:
        for device_uuid in set(device_uuids):
            for socket in list(self._sockets.get(device_uuid, ())):
                await socket.close(code=4401, message=message.encode())

    async def close_all(self) -> None:
        await asyncio.gather(
            *(
                s.close(code=1001, message=b"server shutdown")
                for sockets in self._sockets.values()
                for s in list(sockets)
            ),
            return_exceptions=True,
        )

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            devices=len(self._sockets), connections=sum(len(s) for s in self._sockets.values())
        )
