"""Devices (§3): exists, save (reset-on-resave), findBy, find, installed apps, app status.

Decisions [ours]: `device/save` validates the whole batch (at most 1000) before writing and
writes it in one transaction; `findBy` takes `uuid` or `serialNo`; a device that never reported
an inventory has `apps: []`, `category: "all"` and `reported: null`; AppStatus: see
server.domain.inventory.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from server.context import services_of
from server.domain.devices import parse_device_batch, parse_device_lookup
from server.domain.inventory import InstallEvent, app_status
from server.domain.paging import parse_page_request
from server.domain.validation import query_bool, query_required
from server.handlers.request import admin, json_body, site
from server.services.hub import Hub
from server.store import devices
from server.store.devices import DeviceRows
from server.wire import iso, ok, paged, render_device, render_group


def _render(found: DeviceRows, hub: Hub, now: int) -> list[dict[str, Any]]:
    """Devices with their groups; rtcEnabled from the hub itself: the push channel as it is
    now, not as last written."""
    groups = {uuid: render_group(row) for uuid, row in found.groups.items()}
    rendered = []
    for row in found.rows:
        device = render_device(row, groups.get(row["group_uuid"]), now)
        device["states"]["rtcEnabled"] = hub.connected(device["uuid"])
        rendered.append(device)
    return rendered


@admin
async def exists(request: web.Request) -> web.Response:
    serial = query_required(request.query, "serialNo").strip()
    return ok(await devices.exists(services_of(request).db, site(request).uuid, serial))


@admin
async def save(request: web.Request) -> web.Response:
    services = services_of(request)
    batch = parse_device_batch(await json_body(request))
    license_model = request.query.get("licenseModelUuid") or None
    auto_renew = query_bool(request.query, "autoRenew")
    created, reset = await devices.save_devices(
        services.db,
        site(request).uuid,
        batch,
        services.clock.now_ms(),
        license_model,
        auto_renew,
    )
    # A reset revokes the device's token: forget what is cached and close its push channel.
    services.auth.forget_devices(reset)
    services.checkins.forget(reset)
    await services.hub.close(reset, "device was saved again by an admin; register again")
    return ok(
        has_data=False,
        message=f"saved {created + len(reset)} devices: {created} new, {len(reset)} existing reset",
    )


@admin
async def find_by(request: web.Request) -> web.Response:
    services = services_of(request)
    lookup = parse_device_lookup(request.query)
    now = services.clock.now_ms()
    found = await devices.one_device(services.db, site(request).uuid, lookup)
    return ok(_render(found, services.hub, now)[0])


@admin
async def find(request: web.Request) -> web.Response:
    services = services_of(request)
    page = parse_page_request(
        request.query, sortable=frozenset(devices.SORTABLE), filterable=devices.FILTERABLE
    )
    now = services.clock.now_ms()
    found = await devices.device_page(services.db, site(request).uuid, page, now)
    return paged(_render(found, services.hub, now), total=found.total, size=page.size)


@admin
async def installed(request: web.Request) -> web.Response:
    lookup = parse_device_lookup(request.query)
    device, inventory = await devices.device_inventory(
        services_of(request).db, site(request).uuid, lookup
    )
    return ok(
        {
            "deviceUuid": device["uuid"],
            "serialNo": device["serial_no"],
            "category": inventory["category"] if inventory else "all",
            "apps": json.loads(inventory["apps"]) if inventory else [],
            "reported": iso(inventory["reported"]) if inventory else None,
        }
    )


@admin
async def app_status_of(request: web.Request) -> web.Response:
    package = query_required(request.query, "packageName")
    lookup = parse_device_lookup(request.query)
    device, event, inventory = await devices.device_app_status(
        services_of(request).db, site(request).uuid, lookup, package
    )
    status = app_status(
        package,
        event=None
        if event is None
        else InstallEvent(version_code=event["version_code"], installed=bool(event["installed"])),
        inventory=json.loads(inventory["apps"]) if inventory else [],
    )
    return ok(
        {
            "deviceUuid": device["uuid"],
            "serialNo": device["serial_no"],
            "packageName": package,
            "versionCode": status.version_code,
            "installed": status.installed,
        }
    )
