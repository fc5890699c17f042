"""Profiles (§5): save, all, find, findBy, edit (stale-update check), status.

Decisions [ours]: `save` always creates (a body with a `uuid` is 40001 pointing at edit);
`edit` needs the `updated` value of the loaded profile and replaces the whole profile; referenced
apps (`apps.install[].uuid`), images (`otas[]`) and groups (`scope.group[]`) must exist in the
site (40001 naming the first missing one); serials in `scope.device` that are not yet devices are
saved at once (no existing device is reset). `profile/status` pages its per-device rows with
`page`/`size` and puts the counts next to them in `data`.
"""

from __future__ import annotations

from aiohttp import web

from server.context import services_of
from server.domain.paging import parse_page_request
from server.domain.profiles import ProfileInput, parse_profile, parse_updated
from server.domain.scope import ScopedProfile
from server.domain.validation import expect_object, query_required
from server.errors import InvalidField
from server.handlers.request import admin, json_body, session, site
from server.services import sync_recipients
from server.store import profiles
from server.wire import iso, ok, paged, render_profile


async def _announce(
    request: web.Request, profile_uuid: str, profile: ProfileInput, before: ScopedProfile | None
) -> None:
    """After a save or edit: recompile the site's scopes, sync the devices concerned, and
    schedule the wake of wakeToApply."""
    services = services_of(request)
    site_uuid = site(request).uuid
    services.scopes.invalidate(site_uuid)
    after = next(
        (p for p in (await services.scopes.get(site_uuid)).profiles if p.uuid == profile_uuid),
        None,
    )
    await sync_recipients.profile_changed(services.hub, site_uuid, before, after)
    services.wakes.schedule(site_uuid, profile_uuid, profile.doc)


@admin
async def save(request: web.Request) -> web.Response:
    services = services_of(request)
    body = expect_object(await json_body(request), "profile body")
    if body.get("uuid"):
        raise InvalidField(
            "uuid: profile/save creates a profile; use profile/edit?uuid= to change one"
        )
    now = services.clock.now_ms()
    profile = parse_profile(body, now)
    user = session(request)
    new_uuid = await profiles.create_profile(
        services.db, site(request).uuid, profile, user.user_uuid if user else None, now
    )
    await _announce(request, new_uuid, profile, before=None)
    return ok({"uuid": new_uuid, "name": profile.name, "updated": now})


@admin
async def edit(request: web.Request) -> web.Response:
    services = services_of(request)
    profile_uuid = query_required(request.query, "uuid")
    body = expect_object(await json_body(request), "profile body")
    if body.get("uuid") not in (None, profile_uuid):
        raise InvalidField(
            f"uuid: the body is profile {body['uuid']!r}, the query names {profile_uuid!r}"
        )
    loaded_updated = parse_updated(body.get("updated"))
    now = services.clock.now_ms()
    profile = parse_profile(body, now)
    site_uuid = site(request).uuid
    user = session(request)
    before = await services.scopes.get(site_uuid)
    row = await profiles.update_profile(
        services.db,
        site_uuid,
        profile_uuid,
        profile,
        loaded_updated,
        user.user_uuid if user else None,
        now,
    )
    old = next((p for p in before.profiles if p.uuid == profile_uuid), None)
    await _announce(request, profile_uuid, profile, before=old)
    return ok(render_profile(row))


@admin
async def all_profiles(request: web.Request) -> web.Response:
    rows = await profiles.all_profiles(services_of(request).db, site(request).uuid)
    return ok([render_profile(r) for r in rows])


@admin
async def find(request: web.Request) -> web.Response:
    page = parse_page_request(
        request.query, sortable=frozenset(profiles.SORTABLE), filterable=frozenset(profiles.FILTERS)
    )
    rows, total = await profiles.find_profiles(services_of(request).db, site(request).uuid, page)
    return paged([render_profile(r) for r in rows], total=total, size=page.size)


@admin
async def find_by(request: web.Request) -> web.Response:
    profile_uuid = query_required(request.query, "uuid")
    row = await profiles.load_profile(services_of(request).db, site(request).uuid, profile_uuid)
    return ok(render_profile(row))


@admin
async def status(request: web.Request) -> web.Response:
    profile_uuid = query_required(request.query, "uuid")
    page = parse_page_request(request.query, sortable=frozenset(), filterable=frozenset())
    counts, rows, total = await profiles.status(
        services_of(request).db, site(request).uuid, profile_uuid, page.page, page.size
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
