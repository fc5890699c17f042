"""The device API (§7): register, checkin, apps, profiles, ota/next, events, ws.

Decisions [ours]:
- `register` needs only the API key; the device must exist (40400 otherwise); each register
  issues a new token (random 256-bit, stored as sha256) and revokes the previous one.
- Device keys (§7; rules in server.domain.device_keys, storage in server.store.keys):
  `challenge` needs the API key and a saved device (40400 otherwise, as register) and stores
  nothing. `register` reads the device's key in a read transaction and checks the proof on the
  loop (a signature check is ~0.1-0.2 ms), so a refused register (40100: no proof for a bound
  key, expired, replayed, another device's, a signature that does not verify, another key)
  never reaches the writer and writes nothing: the device's current token stays valid. Failed
  proofs are not rate limited: one costs less than the request around it, and no number of
  guesses gets nearer a signature. Key rotation happens only through an admin re-save.
- `checkin` answers `nextCheckinSeconds` = the server's interval (`--checkin-interval`), or
  1200 s while the device reports `sleeping` (as `activity` or `states.state`).
  `rtcEnabled` is the server's own view (a WebSocket is open), not the device's claim.
  `inventoryWanted`: see server.domain.inventory.
- `events`: which profiles an event may name, and unscopeIfApplied: see server.domain.coverage.
  Ids already stored are accepted again without effect; `data` is the number of events accepted.
- `ota/next` for a profile that does not cover the device is 42200; unknown profile 40400;
  before the profile's start (`startsOn` / `schedule_date.start_on`) it feeds nothing, with
  reason `not_before` (nothing is applied before it).
- Limits (server.limits): `serialNo` follows server.domain.devices.parse_serial (MAX_SERIAL);
  what devices send is validated (server.domain.device_reports) before a check-in is
  acknowledged or batched, so one device's values never reach the shared batch writer.
"""

from __future__ import annotations

import json
import secrets

import structlog
from aiohttp import WSMsgType, web

from server.auth import hash_secret, new_secret
from server.context import services_of
from server.domain import device_keys, feed
from server.domain.device_reports import parse_checkin, parse_events, parse_inventory
from server.domain.devices import parse_serial
from server.domain.inventory import inventory_wanted, stored_hash
from server.domain.presence import next_checkin_s
from server.domain.profiles import offered_otas
from server.domain.scope import ScopedProfile
from server.domain.validation import Fields, expect_object, query_required
from server.errors import NotForDevice, NotFound, Unauthorized
from server.handlers.request import caller, device, json_body, site_key
from server.limits import CHALLENGE_TTL_S
from server.services.checkins import DeviceState
from server.services.hub import DeviceRef
from server.store import agent as agent_store
from server.store import catalog, profiles
from server.store import keys as keys_store
from server.wire import iso, ok, render_ota, render_profile

log = structlog.get_logger("server.agent")


async def _state(request: web.Request) -> DeviceState:
    device_uuid = caller(request).device_uuid
    assert device_uuid is not None
    state = await services_of(request).checkins.device(device_uuid)
    if state is None:
        raise Unauthorized("device token is unknown or revoked; register again")
    return state


async def _covering(request: web.Request, state: DeviceState) -> list[ScopedProfile]:
    scope = await services_of(request).scopes.get(state.site_uuid)
    return scope.for_device(
        serial=state.serial, group_uuid=state.group_uuid, device_uuid=state.uuid
    )


def _not_saved(serial: str) -> NotFound:
    return NotFound(
        f"serialNo: no device {serial!r} in this site; save it first "
        "(device/exists, then device/save)"
    )


@site_key
async def challenge(request: web.Request) -> web.Response:
    services = services_of(request)
    body = Fields(expect_object(await json_body(request)))
    serial = parse_serial(body.obj.get("serialNo"), "serialNo")
    site_uuid = caller(request).site.uuid
    found = await keys_store.key_state(services.db, site_uuid, serial)
    if found.record is None:
        raise _not_saved(serial)
    now = services.clock.now_ms()
    secret = found.secret or await keys_store.ensure_secret(
        services.db, secrets.token_bytes(32), now
    )
    issued = device_keys.issue_challenge(
        secret, site_uuid, serial, secrets.token_bytes(device_keys.NONCE_BYTES), now
    )
    return ok({"challenge": issued.text, "expiresIn": CHALLENGE_TTL_S})


@site_key
async def register(request: web.Request) -> web.Response:
    services = services_of(request)
    body = Fields(expect_object(await json_body(request)))
    serial = parse_serial(body.obj.get("serialNo"), "serialNo")
    hardware_fields = body.obj_field("hardware_info")
    hardware = {
        k: hardware_fields.string(k, max_len=256) for k in ("manufacturer", "brand", "model")
    }
    offered = device_keys.parse_public_key(body.obj.get("publicKey"))
    proof = device_keys.parse_proof(body.obj.get("challenge"), body.obj.get("signature"))
    site_uuid = caller(request).site.uuid
    nonce = None if proof is None else device_keys.claimed_nonce(proof.challenge)
    found = await keys_store.key_state(services.db, site_uuid, serial, nonce)
    if found.record is None:
        raise _not_saved(serial)
    now = services.clock.now_ms()
    try:
        outcome = device_keys.check_register(
            record=found.record,
            offered=offered,
            proof=proof,
            secret=found.secret,
            site_uuid=site_uuid,
            serial=serial,
            now_ms=now,
            used=found.used,
        )
    except Unauthorized as refused:
        log.info("agent.register_refused", serial=serial, reason=refused.message)
        raise
    token = new_secret()
    device_uuid = await keys_store.register(
        services.db,
        site_uuid,
        serial,
        hash_secret(token),
        hardware,
        now,
        expected_key=found.record.key_der,
        outcome=outcome,
    )
    if device_uuid is None:
        raise _not_saved(serial)
    services.auth.forget_devices([device_uuid])
    await services.hub.close([device_uuid], "token replaced by a new registration")
    key = outcome.key
    log.info(
        "agent.registered",
        device=device_uuid,
        serial=serial,
        key=None if key is None else key.fingerprint,
        proved=outcome.consumed is not None,
    )
    return ok({"deviceUuid": device_uuid, "token": token})


@device
async def checkin(request: web.Request) -> web.Response:
    services = services_of(request)
    state = await _state(request)
    report = parse_checkin(await json_body(request))
    interval = next_checkin_s(
        sleeping=report.sleeping, interval_s=services.config.checkin_interval_s
    )
    await services.checkins.record(
        state,
        client_version=report.client_version,
        sleeping=report.sleeping,
        interval_s=interval,
        report=report.report,
    )
    wanted = inventory_wanted(stored_hash=state.inventory_hash, reported_hash=report.inventory_hash)
    state.reported_hash = report.inventory_hash
    covering = await _covering(request, state)
    return ok(
        {
            "nextCheckinSeconds": interval,
            "serverTime": iso(services.clock.now_ms()),
            "inventoryWanted": wanted,
            "profiles": [{"uuid": p.uuid, "updated": p.updated} for p in covering],
        }
    )


@device
async def put_apps(request: web.Request) -> web.Response:
    services = services_of(request)
    state = await _state(request)
    category, apps, given_hash = parse_inventory(await json_body(request))
    inventory_hash = stored_hash(given=given_hash, last_reported=state.reported_hash)
    now = services.clock.now_ms()
    await agent_store.save_inventory(services.db, state.uuid, category, apps, inventory_hash, now)
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
    state = await _state(request)
    wanted = [p.uuid for p in await _covering(request, state)]
    found = await agent_store.profiles_with_progress(
        services_of(request).db, state.site_uuid, state.uuid, wanted
    )
    rendered = []
    for row, mine in found:
        profile = render_profile(row)
        profile["progress"] = {
            "status": mine["status"] if mine else "pending",
            "reason": mine["reason"] if mine else "",
            "updated": iso(mine["updated"]) if mine else None,
        }
        rendered.append(profile)
    return ok(rendered)


def _feed_answer(decision: feed.FeedDecision, chosen: object | None) -> web.Response:
    return ok(
        {
            "ota": render_ota(chosen) if chosen is not None else None,
            "reason": str(decision.reason),
            "target": decision.target or None,
        }
    )


@device
async def ota_next(request: web.Request) -> web.Response:
    services = services_of(request)
    state = await _state(request)
    profile_uuid = query_required(request.query, "profileUuid")
    covering = {p.uuid: p for p in await _covering(request, state)}
    profile = covering.get(profile_uuid)
    if profile is None:
        await profiles.load_profile(services.db, state.site_uuid, profile_uuid)  # 40400 if unknown
        raise NotForDevice(f"profileUuid: profile {profile_uuid!r} does not cover this device")
    waiting = feed.before_start(profile.doc, services.clock.now_ms())
    if waiting is not None:
        return _feed_answer(waiting, None)
    found = await catalog.enabled_otas(services.db, state.site_uuid, offered_otas(profile.doc))
    rows = {r["file_uuid"]: r for r in found}
    decision = feed.select_image(
        [feed.image_of(u, json.loads(r["ota_info"]), r["length"]) for u, r in rows.items()],
        feed.build_of(json.loads(state.report)),
        feed.settings_of(profile.doc),
    )
    return _feed_answer(decision, rows[decision.image.uuid] if decision.image else None)


@device
async def post_events(request: web.Request) -> web.Response:
    services = services_of(request)
    state = await _state(request)
    events = parse_events(await json_body(request))
    covering = frozenset(p.uuid for p in await _covering(request, state))
    outcome = await agent_store.record_events(
        services.db,
        state.site_uuid,
        state.uuid,
        state.serial,
        events,
        covering,
        services.clock.now_ms(),
    )
    if outcome.scope_changed:
        services.scopes.invalidate(state.site_uuid)
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
    services = services_of(request)
    state = await _state(request)
    socket = web.WebSocketResponse(heartbeat=30.0)
    await socket.prepare(request)
    hub, checkins = services.hub, services.checkins
    ref = DeviceRef(
        uuid=state.uuid, site_uuid=state.site_uuid, serial=state.serial, group_uuid=state.group_uuid
    )
    first = await hub.add(ref, socket)  # one channel a device: an older one is closed (4409)
    if first:
        checkins.channel(state.uuid, connected=True)
    try:
        async for message in socket:
            if message.type == WSMsgType.TEXT and _is_ping(message.data):
                await socket.send_json({"type": "pong"})
    finally:
        if hub.remove(state.uuid, socket):
            checkins.channel(state.uuid, connected=False)
    return socket
