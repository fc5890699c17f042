"""Devices (§3): exists, save (reset-on-resave), findBy, find, installed apps, app status.

Decisions [ours]: `device/save` validates the whole batch (at most 1000) before writing and
writes it in one transaction; `findBy` takes `uuid` or `serialNo`; a device that never reported
an inventory has `apps: []`, `category: "all"` and `reported: null`; AppStatus of a package with
no install event falls back to the last inventory (`installed` true with its versionCode) and
otherwise is `installed: false, versionCode: null`.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from aiohttp import web

from server.context import admin, ctx, json_body, site
from server.domain.devices import parse_device_batch
from server.domain.paging import parse_page_request
from server.domain.validation import query_bool, query_required
from server.errors import InvalidField, NotFound
from server.store import devices, groups, reports
from server.wire import iso, ok, paged, render_device, render_group


def render_devices(
    conn: sqlite3.Connection, site_uuid: str, rows: list[sqlite3.Row], now: int
) -> list[dict[str, Any]]:
    group_ids = sorted({r["group_uuid"] for r in rows if r["group_uuid"]})
    by_uuid = {g["uuid"]: render_group(g) for g in groups.get_groups(conn, site_uuid, group_ids)}
    return [render_device(r, by_uuid.get(r["group_uuid"]), now) for r in rows]


def live(request: web.Request, rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """rtcEnabled from the hub itself: the push channel as it is now, not as last written."""
    hub = ctx(request).hub
    for device in rendered:
        device["states"]["rtcEnabled"] = hub.connected(device["uuid"])
    return rendered


def lookup(conn: sqlite3.Connection, site_uuid: str, query: dict[str, str]) -> sqlite3.Row:
    """The device named by `deviceUuid`/`uuid` or `serialNo` in the query; 40400 if absent."""
    device_uuid = query.get("deviceUuid") or query.get("uuid")
    serial = query.get("serialNo")
    if not device_uuid and not serial:
        raise InvalidField("deviceUuid or serialNo: one of these query parameters is required")
    row = devices.find_one(conn, site_uuid, uuid=device_uuid or None, serial=serial or None)
    if row is None:
        what = f"uuid {device_uuid!r}" if device_uuid else f"serial {serial!r}"
        raise NotFound(f"no device with {what} in this site")
    return row


@admin
async def exists(request: web.Request) -> web.Response:
    serial = query_required(request.query, "serialNo").strip()
    return ok(await ctx(request).db.read(devices.exists, site(request).uuid, serial))


@admin
async def save(request: web.Request) -> web.Response:
    c = ctx(request)
    batch = parse_device_batch(await json_body(request))
    license_model = request.query.get("licenseModelUuid") or None
    auto_renew = query_bool(request.query, "autoRenew")
    created, reset = await c.db.write(
        devices.save_devices, site(request).uuid, batch, c.clock.now_ms(), license_model, auto_renew
    )
    # A reset revokes the device's token: forget what is cached and close its push channel.
    c.auth.forget_devices(reset)
    c.checkins.forget(reset)
    await c.hub.close(reset, "device was saved again by an admin; register again")
    return ok(
        has_data=False,
        message=f"saved {created + len(reset)} devices: {created} new, {len(reset)} existing reset",
    )


@admin
async def find_by(request: web.Request) -> web.Response:
    site_uuid = site(request).uuid
    query = dict(request.query)
    now = ctx(request).clock.now_ms()

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        return render_devices(conn, site_uuid, [lookup(conn, site_uuid, query)], now)[0]

    return ok(live(request, [await ctx(request).db.read(read)])[0])


@admin
async def find(request: web.Request) -> web.Response:
    site_uuid = site(request).uuid
    page = parse_page_request(
        request.query, sortable=frozenset(devices.SORTABLE), filterable=devices.FILTERABLE
    )

    now = ctx(request).clock.now_ms()

    def read(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
        rows, total = devices.find_page(conn, site_uuid, page, now)
        return render_devices(conn, site_uuid, rows, now), total

    items, total = await ctx(request).db.read(read)
    return paged(live(request, items), total=total, size=page.size)


@admin
async def installed(request: web.Request) -> web.Response:
    site_uuid = site(request).uuid
    query = dict(request.query)

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        device = lookup(conn, site_uuid, query)
        row = reports.inventory(conn, device["uuid"])
        return {
            "deviceUuid": device["uuid"],
            "serialNo": device["serial_no"],
            "category": row["category"] if row else "all",
            "apps": json.loads(row["apps"]) if row else [],
            "reported": iso(row["reported"]) if row else None,
        }

    return ok(await ctx(request).db.read(read))


@admin
async def app_status(request: web.Request) -> web.Response:
    site_uuid = site(request).uuid
    query = dict(request.query)
    package = query_required(request.query, "packageName")

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        device = lookup(conn, site_uuid, query)
        version: int | None = None
        installed = False
        row = reports.app_status(conn, device["uuid"], package)
        if row is not None:
            version, installed = row["version_code"], bool(row["installed"])
        else:
            inventory = reports.inventory(conn, device["uuid"])
            for app in json.loads(inventory["apps"]) if inventory else []:
                if app.get("packageName") == package:
                    version, installed = app.get("versionCode"), True
                    break
        return {
            "deviceUuid": device["uuid"],
            "serialNo": device["serial_no"],
            "packageName": package,
            "versionCode": version,
            "installed": installed,
        }

    return ok(await ctx(request).db.read(read))
