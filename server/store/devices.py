"""Devices: save with the reset-on-resave rule, lookups, and the paged, filtered find.

Reset-on-resave [seed]: saving a serial that exists in the site resets `states` to
{clientVersion 0, rtcEnabled false, state offline}, clears `enrolled` and `lastCheckedIn`,
revokes the device token and clears its per-profile progress; `created` and `uuid` are kept.
It also unbinds the device's key (§7, server.store.keys): the next register binds a new one.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from server.domain.devices import DeviceInput, DeviceLookup
from server.domain.paging import PageRequest
from server.domain.presence import presence_sql
from server.errors import InvalidField, NotFound
from server.store import keys, reports
from server.store.db import reads, writes
from server.store.groups import get_groups
from server.store.query import FilterSpec, fetch_page

INSERT_COLUMNS = (
    "uuid, site_uuid, serial_no, manufacturer, brand, model, group_uuid, enabled, client_version, "
    "rtc_enabled, state, enrolled, last_checked_in, last_disconnected, license_model_uuid, "
    "auto_renew, created, updated"
)
DEVICE_COLUMNS = (
    f"{INSERT_COLUMNS}, sleeping, interval_s, wake_sent, report, inventory_hash, key_fingerprint"
)

SORTABLE = {
    "created": "created",
    "updated": "updated",
    "uuid": "uuid",
    "serialNo": "serial_no",
    "profile.hardware_info.serial_no": "serial_no",
    "profile.hardware_info.model": "model",
    "profile.hardware_info.manufacturer": "manufacturer",
    "profile.hardware_info.brand": "brand",
    "states.state": "presence",
    "enabled": "enabled",
    "lastCheckedIn": "last_checked_in",
    "enrolled": "enrolled",
}
FILTERS = {
    "uuid": FilterSpec("uuid"),
    "serialNo": FilterSpec("serial_no"),
    "profile.hardware_info.serial_no": FilterSpec("serial_no"),
    "profile.hardware_info.model": FilterSpec("model"),
    "profile.hardware_info.manufacturer": FilterSpec("manufacturer"),
    "profile.hardware_info.brand": FilterSpec("brand"),
    "states.state": FilterSpec("presence"),  # replaced by the presence expression in find_page
    "deviceGroup.uuid": FilterSpec("group_uuid"),
    "enabled": FilterSpec("enabled", "bool"),
    "lastCheckedInBefore": FilterSpec("last_checked_in", "before"),
    "lastCheckedInAfter": FilterSpec("last_checked_in", "after"),
}
FILTERABLE = frozenset(FILTERS)


@writes
def save_devices(
    conn: sqlite3.Connection,
    site_uuid: str,
    devices: Sequence[DeviceInput],
    now: int,
    license_model_uuid: str | None,
    auto_renew: bool | None,
) -> tuple[int, list[str]]:
    """Insert new serials, reset existing ones; return (created count, uuids of reset devices)."""
    groups = {g for g in (d.group_uuid for d in devices) if g is not None}
    if groups:
        marks = ",".join("?" * len(groups))
        found = {
            r[0]
            for r in conn.execute(
                f"SELECT uuid FROM device_groups WHERE site_uuid = ? AND uuid IN ({marks})",
                (site_uuid, *groups),
            )
        }
        for index, device in enumerate(devices):
            if device.group_uuid is not None and device.group_uuid not in found:
                raise InvalidField(
                    f"[{index}].groupUuid: no device group {device.group_uuid!r} in this site"
                )
    created = 0
    reset_uuids: list[str] = []
    renew = None if auto_renew is None else int(auto_renew)
    for device in devices:
        hw = device.hardware
        existing = conn.execute(
            "SELECT uuid FROM devices WHERE site_uuid = ? AND serial_no = ?",
            (site_uuid, hw.serial_no),
        ).fetchone()
        if existing is None:
            conn.execute(
                f"INSERT INTO devices ({INSERT_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 'offline', NULL, NULL, NULL, ?, ?, ?, ?)",
                (
                    str(uuid.uuid4()),
                    site_uuid,
                    hw.serial_no,
                    hw.manufacturer,
                    hw.brand,
                    hw.model,
                    device.group_uuid,
                    int(device.enabled),
                    license_model_uuid,
                    renew,
                    now,
                    now,
                ),
            )
            created += 1
            continue
        conn.execute(
            "UPDATE devices SET manufacturer = ?, brand = ?, model = ?, group_uuid = ?, "
            "enabled = ?, client_version = 0, rtc_enabled = 0, state = 'offline', enrolled = NULL, "
            "last_checked_in = NULL, token_hash = NULL, sleeping = 0, wake_sent = NULL, "
            "report = '{}', inventory_hash = NULL, "
            "license_model_uuid = COALESCE(?, license_model_uuid), "
            "auto_renew = COALESCE(?, auto_renew), updated = ? WHERE uuid = ?",
            (
                hw.manufacturer,
                hw.brand,
                hw.model,
                device.group_uuid,
                int(device.enabled),
                license_model_uuid,
                renew,
                now,
                existing[0],
            ),
        )
        conn.execute("DELETE FROM profile_progress WHERE device_uuid = ?", (existing[0],))
        conn.execute("DELETE FROM profile_exclusions WHERE device_uuid = ?", (existing[0],))
        keys.unbind(conn, existing[0])  # §7: its next register binds a new key
        reset_uuids.append(existing[0])
    return created, reset_uuids


def register_serials(
    conn: sqlite3.Connection, site_uuid: str, serials: Sequence[str], now: int
) -> int:
    """Save serials not yet known (profile scope rule); existing devices are left untouched."""
    added = 0
    for serial in serials:
        if conn.execute(
            "SELECT 1 FROM devices WHERE site_uuid = ? AND serial_no = ?", (site_uuid, serial)
        ).fetchone():
            continue
        conn.execute(
            f"INSERT INTO devices ({INSERT_COLUMNS}) VALUES "
            "(?, ?, ?, '', '', '', NULL, 1, 0, 0, 'offline', NULL, NULL, NULL, NULL, NULL, ?, ?)",
            (str(uuid.uuid4()), site_uuid, serial, now, now),
        )
        added += 1
    return added


@reads
def exists(conn: sqlite3.Connection, site_uuid: str, serial: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM devices WHERE site_uuid = ? AND serial_no = ?", (site_uuid, serial)
        ).fetchone()
        is not None
    )


def find_one(
    conn: sqlite3.Connection, site_uuid: str, *, uuid: str | None = None, serial: str | None = None
) -> sqlite3.Row | None:
    column, value = ("uuid", uuid) if uuid is not None else ("serial_no", serial)
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE site_uuid = ? AND {column} = ?",
        (site_uuid, value),
    ).fetchone()
    return row


def find_page(
    conn: sqlite3.Connection, site_uuid: str, request: PageRequest, now: int
) -> tuple[list[sqlite3.Row], int]:
    """One page of devices; `states.state` filters and sorts on presence as of `now`."""
    state = presence_sql(now)
    return fetch_page(
        conn,
        table="devices",
        columns=DEVICE_COLUMNS,
        site_uuid=site_uuid,
        request=request,
        filters={**FILTERS, "states.state": FilterSpec(state)},
        sortable={**SORTABLE, "states.state": state},
        default_sort="created",
    )


@reads
def device_by_token(conn: sqlite3.Connection, token_hash: str) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT uuid, site_uuid FROM devices WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    return (row[0], row[1]) if row else None


@dataclass(frozen=True, slots=True)
class DeviceRows:
    """Devices with the groups they are in (by uuid), and the count of all that matched."""

    rows: list[sqlite3.Row]
    groups: dict[str, sqlite3.Row]
    total: int


def _with_groups(conn: sqlite3.Connection, site_uuid: str, rows: list[sqlite3.Row]) -> DeviceRows:
    group_ids = sorted({r["group_uuid"] for r in rows if r["group_uuid"]})
    groups = {g["uuid"]: g for g in get_groups(conn, site_uuid, group_ids)}
    return DeviceRows(rows, groups, len(rows))


def _lookup(conn: sqlite3.Connection, site_uuid: str, lookup: DeviceLookup) -> sqlite3.Row:
    row = find_one(conn, site_uuid, uuid=lookup.uuid, serial=lookup.serial)
    if row is None:
        raise NotFound(f"no device with {lookup.describe()} in this site")
    return row


@reads
def device_page(
    conn: sqlite3.Connection, site_uuid: str, request: PageRequest, now: int
) -> DeviceRows:
    rows, total = find_page(conn, site_uuid, request, now)
    found = _with_groups(conn, site_uuid, rows)
    return DeviceRows(found.rows, found.groups, total)


@reads
def one_device(conn: sqlite3.Connection, site_uuid: str, lookup: DeviceLookup) -> DeviceRows:
    """The device named (40400 if absent), with its group."""
    return _with_groups(conn, site_uuid, [_lookup(conn, site_uuid, lookup)])


@reads
def device_inventory(
    conn: sqlite3.Connection, site_uuid: str, lookup: DeviceLookup
) -> tuple[sqlite3.Row, sqlite3.Row | None]:
    """The device named (40400 if absent) and its last inventory, if any."""
    device = _lookup(conn, site_uuid, lookup)
    return device, reports.inventory(conn, device["uuid"])


@reads
def device_app_status(
    conn: sqlite3.Connection, site_uuid: str, lookup: DeviceLookup, package: str
) -> tuple[sqlite3.Row, sqlite3.Row | None, sqlite3.Row | None]:
    """The device named (40400 if absent), the package's AppStatus row and the last inventory."""
    device = _lookup(conn, site_uuid, lookup)
    status = reports.app_status(conn, device["uuid"], package)
    inventory = reports.inventory(conn, device["uuid"]) if status is None else None
    return device, status, inventory
