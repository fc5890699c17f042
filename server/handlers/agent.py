"""The device API (§7): register, checkin, apps, profiles, ota/next, events, ws.

Decisions [ours]:
- `register` needs only the API key; the device must exist (40400 otherwise); each register
  issues a new token (random 256-bit, stored as sha256) and revokes the previous one.
- `checkin` answers `nextCheckinSeconds` = the server's interval (`--checkin-interval`), or
  1200 s while the device reports `sleeping` (as `activity` or `states.state`).
  `rtcEnabled` is the server's own view (a WebSocket is open), not the device's claim.
  `inventoryWanted` is true until an inventory was stored, and whenever the check-in's
  `inventoryHash` differs from the one stored with the last inventory (the PUT's
  `inventoryHash` if given, else the hash of the check-in before it).
- `events`: a profile named by an event must cover the device, or have covered it (progress or
  exclusion exists); otherwise 42200 and nothing of the batch is stored. Ids already stored are
  accepted again without effect; `data` is the number of events accepted.
- `ota/next` for a profile that does not cover the device is 42200; unknown profile 40400;
  before the profile's start (`startsOn` / `schedule_date.start_on`) it feeds nothing, with
  reason `not_before` (nothing is applied before it).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from server.auth import hash_secret, new_secret
from server.checkins import DeviceState
from server.context import caller, ctx, device, json_body, site_key
from server.domain import feed
from server.domain.device_reports import parse_checkin, parse_events, parse_inventory
from server.domain.presence import SLEEP_INTERVAL_S
from server.domain.profiles import start_of
from server.domain.scope import ScopedProfile
from server.domain.validation import Fields, expect_object, query_required
from server.errors import NotForDevice, NotFound, Unauthorized
from server.hub import DeviceRef
from server.store import agent as agent_store
from server.store import catalog, profiles
from server.wire import iso, ok, render_ota, render_profile

log = structlog.get_logger("server.agent")


async def _state(request: web.Request) -> DeviceState:
    device_uuid = caller(request).device_uuid
    assert device_uuid is not None
    state = await ctx(request).checkins.device(device_uuid)
    if state is None:
        raise Unauthorized("device token is unknown or revoked; register again")
    return state


async def _covering(request: web.Request, state: DeviceState) -> list[ScopedProfile]:
    scope = await ctx(request).scopes.get(state.site_uuid)
    return scope.for_device(
        serial=state.serial, group_uuid=state.group_uuid, device_uuid=state.uuid
    )


@site_key
async def register(request: web.Request) -> web.Response:
    c = ctx(request)
    body = Fields(expect_object(await json_body(request)))
    serial = body.string("serialNo", required=True, allow_empty=False, max_len=128).strip()
    hardware_fields = body.obj_field("hardware_info")
    hardware = {
        k: hardware_fields.string(k, max_len=256) for k in ("manufacturer", "brand", "model")
    }
    token = new_secret()
    site_uuid = caller(request).site.uuid
    row = await c.db.write(
        agent_store.set_token, site_uuid, serial, hash_secret(token), hardware, c.clock.now_ms()
    )
    if row is None:
        raise NotFound(
            f"serialNo: no device {serial!r} in this site; save it first "
            "(device/exists, then device/save)"
        )
    c.auth.forget_devices([row["uuid"]])
    await c.hub.close([row["uuid"]], "token replaced by a new registration")
    log.info("agent.registered", device=row["uuid"], serial=serial)
    return ok({"deviceUuid": row["uuid"], "token": token})


@device
async def checkin(request: web.Request) -> web.Response:
    c = ctx(request)
    state = await _state(request)
    report = parse_checkin(await json_body(request))
    interval = SLEEP_INTERVAL_S if report.sleeping else c.config.checkin_interval_s
    await c.checkins.record(
        state,
        client_version=report.client_version,
        sleeping=report.sleeping,
        interval_s=interval,
        report=report.report,
    )
    wanted = state.inventory_hash is None or (
        report.inventory_hash is not None and report.inventory_hash != state.inventory_hash
    )
    state.reported_hash = report.inventory_hash
    covering = await _covering(request, state)
    return ok(
        {
            "nextCheckinSeconds": interval,
            "serverTime": iso(c.clock.now_ms()),
            "inventoryWanted": wanted,
            "profiles": [{"uuid": p.uuid, "updated": p.updated} for p in covering],
        }
    )


@device
async def put_apps(request: web.Request) -> web.Response:
    c = ctx(request)
    state = await _state(request)
    category, apps, given_hash = parse_inventory(await json_body(request))
    inventory_hash = given_hash or state.reported_hash or ""
    now = c.clock.now_ms()
    await c.db.write(agent_store.save_inventory, state.uuid, category, apps, inventory_hash, now)
    state.inventory_hash = inventory_hash
    return ok(
        {
            "deviceUuid": state.uuid,
            "serialNo": state.serial,
            "category": category,
            "apps": apps,
            "reported": iso(now),
        }
    )


@device
async def get_profiles(request: web.Request) -> web.Response:
    c = ctx(request)
    state = await _state(request)
    wanted = [p.uuid for p in await _covering(request, state)]

    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        progress = agent_store.progress_of(conn, state.uuid)
        rendered = []
        for profile_uuid in wanted:
            try:
                profile = render_profile(profiles.get_profile(conn, state.site_uuid, profile_uuid))
            except NotFound:
                continue  # deleted since the scope was compiled
            mine = progress.get(profile_uuid)
            profile["progress"] = {
                "status": mine["status"] if mine else "pending",
                "reason": mine["reason"] if mine else "",
                "updated": iso(mine["updated"]) if mine else None,
            }
            rendered.append(profile)
        return rendered

    return ok(await c.db.read(read))


def _image(row: sqlite3.Row) -> feed.Image:
    info = json.loads(row["ota_info"])
    return feed.Image(
        uuid=row["file_uuid"],
        type=info.get("type") or "base",
        ab_update=bool(info.get("abUpdate")),
        device_id=info.get("deviceId") or "",
        product_id=info.get("productId") or "",
        sku_id=info.get("skuId") or "",
        customer_id=info.get("customerId") or "",
        pre_build=info.get("preBuild") or "",
        post_build=info.get("postBuild") or "",
        build_date=info.get("buildDate"),
        size=row["length"],
    )


def device_build(state: DeviceState) -> feed.DeviceBuild:
    build = json.loads(state.report).get("build") or {}
    return feed.DeviceBuild(
        fingerprint=build.get("fingerprint") or "",
        build_date=build.get("buildDate"),
        device_id=build.get("deviceId") or "",
        product_id=build.get("productId") or "",
        sku_id=build.get("skuId") or "",
        customer_id=build.get("customerId") or "",
        ab_update=bool(build.get("abUpdate")),
        region=build.get("region") or "",
    )


@device
async def ota_next(request: web.Request) -> web.Response:
    c = ctx(request)
    state = await _state(request)
    profile_uuid = query_required(request.query, "profileUuid")
    covering = {p.uuid: p for p in await _covering(request, state)}
    profile = covering.get(profile_uuid)
    if profile is None:
        await c.db.read(profiles.get_profile, state.site_uuid, profile_uuid)  # 40400 if unknown
        raise NotForDevice(f"profileUuid: profile {profile_uuid!r} does not cover this device")
    start = start_of(profile.doc)
    if start is not None and c.clock.now_ms() < start:
        return ok({"ota": None, "reason": "not_before", "target": None})
    ota_uuids = [o if isinstance(o, str) else o["uuid"] for o in profile.doc.get("otas") or []]

    def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
        rows = (catalog.ota_by_uuid(conn, state.site_uuid, u) for u in ota_uuids)
        return [r for r in rows if r is not None and r["enable"]]

    rows = {r["file_uuid"]: r for r in await c.db.read(read)}
    otas_settings = (profile.doc.get("settings") or {}).get("otas") or {}
    decision = feed.select_image(
        [_image(r) for r in rows.values()],
        device_build(state),
        feed.FeedSettings(
            partial_first=bool(otas_settings.get("partialFirst")),
            check_build_date=bool(otas_settings.get("checkBuildDate", True)),
        ),
    )
    chosen = rows[decision.image.uuid] if decision.image is not None else None
    return ok(
        {
            "ota": render_ota(chosen) if chosen is not None else None,
            "reason": str(decision.reason),
            "target": decision.target or None,
        }
    )


@device
async def post_events(request: web.Request) -> web.Response:
    c = ctx(request)
    state = await _state(request)
    events = parse_events(await json_body(request))
    covering = {p.uuid for p in await _covering(request, state)}
    named = {e.profile_uuid for e in events if e.profile_uuid is not None} - covering
    now = c.clock.now_ms()

    def write(conn: sqlite3.Connection) -> agent_store.EventOutcome:
        known = agent_store.known_events(conn, state.uuid, [e.id for e in events])
        for event in events:
            if (
                event.profile_uuid in named
                and event.id not in known
                and not agent_store.has_covered(conn, event.profile_uuid, state.uuid)
            ):
                raise NotForDevice(
                    f"profileUuid: profile {event.profile_uuid!r} does not cover this device "
                    f"(event {event.id})"
                )
        outcome = agent_store.store_events(conn, state.site_uuid, state.uuid, events, now)
        for profile_uuid in outcome.applied_profiles:
            if agent_store.unscope(
                conn, state.site_uuid, profile_uuid, state.uuid, state.serial, now
            ):
                outcome = agent_store.EventOutcome(outcome.stored, outcome.applied_profiles, True)
        return outcome

    outcome = await c.db.write(write)
    if outcome.scope_changed:
        c.scopes.invalidate(state.site_uuid)
    return ok(len(events))


def _is_ping(text: str) -> bool:
    """Devices may send {"type": "ping"} to check the channel; anything else is ignored."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


@device
async def websocket(request: web.Request) -> web.WebSocketResponse:
    c = ctx(request)
    state = await _state(request)
    socket = web.WebSocketResponse(heartbeat=30.0)
    await socket.prepare(request)
    first = not c.hub.connected(state.uuid)
    c.hub.add(DeviceRef(state.uuid, state.site_uuid, state.serial, state.group_uuid), socket)
    if first:
        c.checkins.channel(state.uuid, connected=True)
    try:
        async for message in socket:
            if message.type == WSMsgType.TEXT and _is_ping(message.data):
                await socket.send_json({"type": "pong"})
    finally:
        if c.hub.remove(state.uuid, socket):
            c.checkins.channel(state.uuid, connected=False)
    return socket
