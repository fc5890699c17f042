"""The end-of-run consistency check: what each agent believes against the server's record.

Three facts per device (§9 `consistency`):
- `enrolled`: the agent holds a token and has checked in (the server sets `enrolled` on the first
  check-in) against the server's device record (`enrolled` set or not);
- `apps`: the agent's installed apps (package -> versionCode) against the inventory the server
  holds for it (`device/app/installed`);
- `build`: the agent's running build fingerprint against the newest build the server heard it
  install (its `ota` `installed` events, `logs/find`); a device the server heard install no image
  must still run the build it started with. (The admin API does not show the build a check-in
  reported; these events are the server's record of a device's build changes.)

Before reading, `settle()` lets every stopped agent whose belief the server may not have heard
yet (a changed inventory not reported, a token without a check-in) check in and flush once, so
that a change in the last check-in interval is not listed as a mismatch. `compare()` is pure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from agent.core.checkin import inventory_hash
from agent.errors import AgentError
from simulator.admin import AdminError
from simulator.fleet import Device

log = structlog.get_logger("simulator.consistency")
SETTLE_CONCURRENCY = 64
READ_CONCURRENCY = 16
SETTLE_TIMEOUT_S = 15.0
KEPT = 1000  # mismatches listed in the report at most (the count is exact)


@dataclass(frozen=True, slots=True, kw_only=True)
class Belief:
    """What one agent believes about its device."""

    serial: str
    enrolled: bool
    apps: Mapping[str, int | None]
    build: str
    initial_build: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """What the server holds for one device (None: the server knows no such device)."""

    serial: str
    enrolled: bool
    apps: Mapping[str, int | None]
    installed_build: str | None  # the newest build it heard the device install, if any


@dataclass(frozen=True, slots=True, kw_only=True)
class Mismatch:
    serial: str
    field: str
    device: Any
    server: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "field": self.field,
            "device": self.device,
            "server": self.server,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Consistency:
    checked: int
    mismatches: tuple[Mismatch, ...]
    settled: int = 0
    errors: tuple[str, ...] = field(default_factory=tuple)  # reads that failed

    def to_json(self) -> dict[str, Any]:
        """report.json `consistency`: {checked, mismatches [...]}, plus what was settled."""
        return {
            "checked": self.checked,
            "mismatches": [m.to_json() for m in self.mismatches[:KEPT]],
            "mismatch_count": len(self.mismatches),
            "settled": self.settled,
            "errors": list(self.errors),
        }


class ServerRecords(Protocol):
    """The admin reads the check needs (simulator/admin.py's client, adapted by the runner)."""

    async def devices(self) -> list[dict[str, Any]]:
        """Every device record of the site (device/find, all pages)."""
        ...

    async def installed_apps(self, serial: str) -> list[dict[str, Any]]:
        """The inventory the server holds for the device (device/app/installed `apps`)."""
        ...

    async def ota_installs(self) -> list[dict[str, Any]]:
        """Every `ota` event with status `installed` of the site (logs/find, all pages)."""
        ...


# -- pure -------------------------------------------------------------------------------------


def compare(beliefs: Iterable[Belief], records: Mapping[str, Record]) -> list[Mismatch]:
    """Every fact on which an agent and the server disagree, in the beliefs' order."""
    found: list[Mismatch] = []
    for belief in beliefs:
        record = records.get(belief.serial)
        if record is None:
            found.append(Mismatch(serial=belief.serial, field="device", device=True, server=None))
            continue
        if belief.enrolled != record.enrolled:
            found.append(
                Mismatch(
                    serial=belief.serial,
                    field="enrolled",
                    device=belief.enrolled,
                    server=record.enrolled,
                )
            )
        if belief.enrolled and dict(belief.apps) != dict(record.apps):
            found.append(
                Mismatch(
                    serial=belief.serial,
                    field="apps",
                    device=_apps_diff(belief.apps, record.apps),
                    server=_apps_diff(record.apps, belief.apps),
                )
            )
        server_build = record.installed_build or belief.initial_build
        if belief.build != server_build:
            found.append(
                Mismatch(
                    serial=belief.serial, field="build", device=belief.build, server=server_build
                )
            )
    return found


def _apps_diff(mine: Mapping[str, int | None], theirs: Mapping[str, int | None]) -> dict[str, Any]:
    """The entries of `mine` that `theirs` lacks or holds at another version."""
    return {p: v for p, v in sorted(mine.items()) if p not in theirs or theirs[p] != v}


def apps_of_wire(apps: Sequence[Mapping[str, Any]]) -> dict[str, int | None]:
    """package -> versionCode from the protocol's AppInfo list."""
    out: dict[str, int | None] = {}
    for app in apps:
        name = app.get("packageName")
        if isinstance(name, str):
            code = app.get("versionCode")
            out[name] = int(code) if isinstance(code, (int, str)) and str(code).isdigit() else None
    return out


def newest_builds(
    events: Iterable[Mapping[str, Any]], serial_of: Mapping[str, str]
) -> dict[str, str]:
    """serial -> the build of its newest `installed` ota event (by `at`, ties by order)."""
    newest: dict[str, tuple[str, str]] = {}
    for event in events:
        serial = serial_of.get(str(event.get("deviceUuid")))
        build = event.get("build")
        if serial is None or not isinstance(build, str) or not build:
            continue
        at = str(event.get("at") or "")
        if serial not in newest or at >= newest[serial][0]:
            newest[serial] = (at, build)
    return {serial: build for serial, (_, build) in newest.items()}


# -- the shell --------------------------------------------------------------------------------


async def belief_of(device: Device, initial_builds: Mapping[str, str]) -> Belief:
    """`initial_builds`: kind name -> the fingerprint its devices start with."""
    state = device.agent.state
    build = await device.platform.build()
    return Belief(
        serial=device.planned.serial,
        enrolled=state.enrolled and state.last_checkin is not None,
        apps={a.package_name: a.version_code for a in device.platform.apps.values()},
        build=build.fingerprint,
        initial_build=initial_builds.get(device.planned.kind, ""),
    )


def _unheard(device: Device) -> bool:
    """The server may not have heard this agent's belief yet."""
    agent, state = device.agent, device.agent.state
    if not state.enrolled:
        return False
    if state.last_checkin is None or agent.outbox.count() > 0:
        return True
    return inventory_hash(list(device.platform.apps.values())) != state.reported_inventory_hash


async def settle(devices: Sequence[Device], also: Collection[str] = ()) -> int:
    """One check-in and flush for each stopped agent the server may not have heard (and for
    the serials `also`: devices an admin re-saved, whose token the server revoked); bounded in
    concurrency and time. Returns how many agents were asked."""
    pending = [
        d
        for d in devices
        if d.error is None
        and (_unheard(d) or (d.planned.serial in also and d.agent.state.enrolled))
    ]
    gate = asyncio.Semaphore(SETTLE_CONCURRENCY)

    async def one(device: Device) -> None:
        async with gate:
            with suppress(AgentError):
                await device.agent.checkin()
                await device.agent.flush()

    with suppress(TimeoutError):
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            await asyncio.gather(*(one(d) for d in pending))
    return len(pending)


async def check(
    devices: Sequence[Device],
    server: ServerRecords,
    initial_builds: Mapping[str, str],
    *,
    settled: int = 0,
) -> Consistency:
    """Read the server's record of every device and compare it with the agents' beliefs."""
    errors: list[str] = []
    beliefs = [await belief_of(d, initial_builds) for d in devices]
    rows = await server.devices()
    uuid_of: dict[str, str] = {}
    enrolled: dict[str, bool] = {}
    for row in rows:
        serial = str(row.get("profile", {}).get("hardware_info", {}).get("serial_no", ""))
        uuid_of[serial] = str(row.get("uuid"))
        enrolled[serial] = row.get("enrolled") is not None
    events = await server.ota_installs()
    builds = newest_builds(events, {u: s for s, u in uuid_of.items()})
    gate = asyncio.Semaphore(READ_CONCURRENCY)
    apps: dict[str, dict[str, int | None]] = {}

    async def read(serial: str) -> None:
        async with gate:
            try:
                apps[serial] = apps_of_wire(await server.installed_apps(serial))
            except AdminError as exc:
                errors.append(f"{serial}: {exc}")

    await asyncio.gather(*(read(b.serial) for b in beliefs if b.enrolled and b.serial in uuid_of))
    records = {
        serial: Record(
            serial=serial,
            enrolled=enrolled[serial],
            apps=apps.get(serial, {}),
            installed_build=builds.get(serial),
        )
        for serial in uuid_of
    }
    mismatches = compare(beliefs, records)
    log.info("consistency.checked", devices=len(beliefs), mismatches=len(mismatches))
    return Consistency(
        checked=len(beliefs), mismatches=tuple(mismatches), settled=settled, errors=tuple(errors)
    )
