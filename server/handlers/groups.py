"""Device groups (§3): save (create, or update with an existing uuid), all, findBy.

Decisions [ours]: `profile.name` is required; `enabled` defaults to true; an unknown `uuid` on save
is 40400; a group may not be its own ancestor (40001). Moving a group syncs the connected
devices below it whose covering profiles changed.
"""

from __future__ import annotations

from aiohttp import web

from server.context import services_of
from server.domain.groups import with_descendants
from server.domain.validation import Fields, expect_object, query_required
from server.handlers.request import admin, json_body, site
from server.services import sync_recipients
from server.store import groups
from server.store.groups import GroupInput
from server.wire import ok, render_group


@admin
async def save(request: web.Request) -> web.Response:
    services = services_of(request)
    body = Fields(expect_object(await json_body(request)))
    group = GroupInput(
        uuid=body.optional_string("uuid", max_len=64) or None,
        name=body.obj_field("profile", required=True)
        .string("name", required=True, allow_empty=False, max_len=256)
        .strip(),
        enabled=body.boolean("enabled", default=True),
        parent_uuid=body.optional_string("parentUuid", max_len=64) or None,
    )
    site_uuid = site(request).uuid
    scopes = services.scopes
    before = await scopes.get(site_uuid)
    saved = await groups.save(services.db, site_uuid, group, services.clock.now_ms())
    rendered = render_group(saved.row)
    if saved.parents is not None:  # moved: devices below it may be covered by other profiles
        scopes.invalidate(site_uuid)
        subtree = with_descendants([rendered["uuid"]], saved.parents)
        after = await scopes.get(site_uuid)
        await sync_recipients.groups_changed(services.hub, site_uuid, before, after, subtree)
    return ok(rendered)


@admin
async def all_groups(request: web.Request) -> web.Response:
    rows = await groups.all_groups(services_of(request).db, site(request).uuid)
    return ok([render_group(r) for r in rows])


@admin
async def find_by(request: web.Request) -> web.Response:
    group_uuid = query_required(request.query, "uuid")
    row = await groups.load_group(services_of(request).db, site(request).uuid, group_uuid)
    return ok(render_group(row))
