"""Profiles (§5): save, all, find, findBy, edit (stale-update check), status.

Decisions [ours]: `save` always creates (a body with a `uuid` is 40001 pointing at edit);
`edit` needs the `updated` value of the loaded profile and replaces the whole profile; referenced
apps (`apps.install[].uuid`), images (`otas[]`) and groups (`scope.group[]`) must exist in the
site (40001 naming the first missing one); serials in `scope.device` that are not yet devices are
saved at once (no existing device is reset). `profile/status` pages its per-device rows with
`page`/`size` and puts the counts next to them in `data`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from aiohttp import web

from server import push
from server.context import admin, ctx, json_body, session, site
from server.domain.paging import parse_page_request
from server.domain.profiles import ProfileInput, parse_profile, parse_updated
from server.domain.scope import ScopedProfile
from server.domain.validation import expect_object, query_required
from server.errors import InvalidField
from server.store import catalog, devices, profiles
from server.wire import iso, ok, paged, render_profile


def _check_references(conn: sqlite3.Connection, site_uuid: str, profile: ProfileInput) -> None:
    checks = (
        ("apps", profile.app_uuids, "apps.install[].uuid", "app"),
        ("otas", profile.ota_uuids, "otas[]", "OTA image"),
        ("device_groups", profile.group_uuids, "scope.group[]", "device group"),
    )
    for table, uuids, field, what in checks:
        missing = catalog.missing(conn, table, site_uuid, uuids)
        if missing:
            raise InvalidField(
                f"{field}: no {what} {missing[0]!r} in this site"
                + ("; upload it before naming it in a profile" if table != "device_groups" else "")
            )


async def _announce(
    request: web.Request, profile_uuid: str, profile: ProfileInput, before: ScopedProfile | None
) -> None:
    """After a save or edit: recompile the site's scopes, sync the devices concerned, and
    schedule the wake of wakeToApply."""
    c = ctx(request)
    site_uuid = site(request).uuid
    c.scopes.invalidate(site_uuid)
    after = next(
        (p for p in (await c.scopes.get(site_uuid)).profiles if p.uuid == profile_uuid), None
    )
    await push.profile_changed(c.hub, site_uuid, before, after)
    c.wakes.schedule(site_uuid, profile_uuid, profile.doc)


@admin
async def save(request: web.Request) -> web.Response:
    c = ctx(request)
    body = expect_object(await json_body(request), "profile body")
    if body.get("uuid"):
        raise InvalidField(
            "uuid: profile/save creates a profile; use profile/edit?uuid= to change one"
        )
    now = c.clock.now_ms()
    profile = parse_profile(body, now)
    site_uuid = site(request).uuid
    user = session(request)

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        _check_references(conn, site_uuid, profile)
        devices.register_serials(conn, site_uuid, profile.device_serials, now)
        new_uuid = profiles.insert_profile(
            conn, site_uuid, profile, user.user_uuid if user else None, now
        )
        return {"uuid": new_uuid, "name": profile.name, "updated": now}

    saved = await c.db.write(write)
    await _announce(request, saved["uuid"], profile, before=None)
    return ok(saved)


@admin
async def edit(request: web.Request) -> web.Response:
    c = ctx(request)
    profile_uuid = query_required(request.query, "uuid")
    body = expect_object(await json_body(request), "profile body")
    if body.get("uuid") not in (None, profile_uuid):
        raise InvalidField(
            f"uuid: the body is profile {body['uuid']!r}, the query names {profile_uuid!r}"
        )
    loaded_updated = parse_updated(body.get("updated"))
    now = c.clock.now_ms()
    profile = parse_profile(body, now)
    site_uuid = site(request).uuid
    user = session(request)

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        profiles.get_profile(conn, site_uuid, profile_uuid)  # 40400 before validation of refs
        _check_references(conn, site_uuid, profile)
        devices.register_serials(conn, site_uuid, profile.device_serials, now)
        profiles.edit_profile(
            conn,
            site_uuid,
            profile_uuid,
            profile,
            loaded_updated,
            user.user_uuid if user else None,
            now,
        )
        return render_profile(profiles.get_profile(conn, site_uuid, profile_uuid))

    before = await c.scopes.get(site_uuid)
    rendered = await c.db.write(write)
    old = next((p for p in before.profiles if p.uuid == profile_uuid), None)
    await _announce(request, profile_uuid, profile, before=old)
    return ok(rendered)


@admin
async def all_profiles(request: web.Request) -> web.Response:
    rows = await ctx(request).db.read(profiles.all_profiles, site(request).uuid)
    return ok([render_profile(r) for r in rows])


@admin
async def find(request: web.Request) -> web.Response:
    page = parse_page_request(
        request.query, sortable=frozenset(profiles.SORTABLE), filterable=frozenset(profiles.FILTERS)
    )
    rows, total = await ctx(request).db.read(profiles.find_profiles, site(request).uuid, page)
    return paged([render_profile(r) for r in rows], total=total, size=page.size)


@admin
async def find_by(request: web.Request) -> web.Response:
    profile_uuid = query_required(request.query, "uuid")
    row = await ctx(request).db.read(profiles.get_profile, site(request).uuid, profile_uuid)
    return ok(render_profile(row))


@admin
async def status(request: web.Request) -> web.Response:
    profile_uuid = query_required(request.query, "uuid")
    page = parse_page_request(request.query, sortable=frozenset(), filterable=frozenset())
    counts, rows, total = await ctx(request).db.read(
        profiles.status, site(request).uuid, profile_uuid, page.page, page.size
    )
    devices_rows = [
        {
            "deviceUuid": r["device_uuid"],
            "serialNo": r["serial_no"],
            "status": r["status"],
            "reason": r["reason"],
            "updated": iso(r["updated"]),
        }
        for r in rows
    ]
    return paged({**counts, "devices": devices_rows}, total=total, size=page.size)
