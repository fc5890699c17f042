"""Device groups (§3): save (create, or update with an existing uuid), all, findBy.

Decisions [ours]: `profile.name` is required; `enabled` defaults to true; an unknown `uuid` on save
is 40400; a group may not be its own ancestor (40001).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from aiohttp import web

from server import push
from server.context import admin, ctx, json_body, site
from server.domain.groups import with_descendants
from server.domain.validation import Fields, expect_object, query_required
from server.errors import NotFound
from server.store import groups
from server.store.groups import GroupInput
from server.wire import ok, render_group


def _load(conn: sqlite3.Connection, site_uuid: str, group_uuid: str) -> dict[str, Any]:
    rows = groups.get_groups(conn, site_uuid, [group_uuid])
    if not rows:
        raise NotFound(f"uuid: no device group {group_uuid!r} in this site")
    return render_group(rows[0])


@admin
async def save(request: web.Request) -> web.Response:
    c = ctx(request)
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

    before = await c.scopes.get(site_uuid)

    def write(conn: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, str | None]]:
        old_parent = groups.parent_map(conn, site_uuid).get(group.uuid or "")
        saved = groups.save_group(conn, site_uuid, group, c.clock.now_ms())
        moved = group.uuid is not None and old_parent != group.parent_uuid
        return _load(conn, site_uuid, saved), groups.parent_map(conn, site_uuid) if moved else {}

    rendered, parents = await c.db.write(write)
    if parents:  # the group moved: devices below it may be covered by other profiles now
        c.scopes.invalidate(site_uuid)
        subtree = with_descendants([rendered["uuid"]], parents)
        await push.groups_changed(c.hub, site_uuid, before, await c.scopes.get(site_uuid), subtree)
    return ok(rendered)


@admin
async def all_groups(request: web.Request) -> web.Response:
    site_uuid = site(request).uuid

    rows = await ctx(request).db.read(groups.all_groups, site_uuid)
    return ok([render_group(r) for r in rows])


@admin
async def find_by(request: web.Request) -> web.Response:
    group_uuid = query_required(request.query, "uuid")
    return ok(await ctx(request).db.read(_load, site(request).uuid, group_uuid))
