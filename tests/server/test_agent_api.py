"""§7 device API end to end: register, check-in, inventory, profiles, image feed, events."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from server.auth import hash_secret
from server.clock import FixedClock
from tests.conftest import StartServer
from tests.helpers import NOW_MS, Client, Server, ota_zip
from tests.server.test_groups import make_group

BUILD = {
    "fingerprint": "acme/walleye/walleye:14/UP1A/100:user/release-keys",
    "buildDate": 1700000000,
    "deviceId": "walleye",
    "productId": "",
    "abUpdate": True,
    "sdk": 34,
    "slot": "_a",
}
CHECKIN = {
    "states": {"clientVersion": 3, "rtcEnabled": False, "state": "online"},
    "activity": "active",
    "power": {"ac": True, "battery": 80},
    "network": "wifi",
    "build": BUILD,
    "inventoryHash": "h1",
}


async def enroll(admin: Client, serial: str, group: str | None = None) -> Client:
    """exists -> save -> register, as the agent does; returns a client with the device token."""
    if not (await admin.get("/ota/api/device/exists", serialNo=serial)).data:
        body: dict[str, Any] = {"profile": {"hardware_info": {"serial_no": serial}}}
        if group is not None:
            body["groupUuid"] = group
        assert (await admin.post("/ota/api/device/save", [body])).status == 200
    key_only = Client(admin.http, admin.base, admin.key)
    reply = await key_only.post(
        "/ota/api/agent/register", {"serialNo": serial, "hardware_info": {"model": "Pixel"}}
    )
    assert reply.status == 200, reply.body
    return Client(admin.http, admin.base, admin.key, reply.data["token"], scheme="Device")


def event(profile: str | None, kind: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "at": "2026-09-21T14:13:20.000Z",
        "profileUuid": profile,
        "kind": kind,
        "target": extra.pop("target", ""),
        "status": status,
        **extra,
    }


async def test_register_rules(server: Server, admin: Client) -> None:
    """Unknown serial 40400; missing serialNo 40001; no key 40100; the token is stored hashed."""
    anonymous = Client(admin.http, server.base, None)
    key_only = Client(admin.http, server.base, admin.key)
    assert (await anonymous.post("/ota/api/agent/register", {"serialNo": "X"})).code == 40100
    unknown = await key_only.post("/ota/api/agent/register", {"serialNo": "X"})
    assert unknown.code == 40400 and "save it first" in unknown.body["message"]
    assert (await key_only.post("/ota/api/agent/register", {})).code == 40001
    device = await enroll(admin, "D1")
    stored = server.sql("SELECT token_hash, model FROM devices WHERE serial_no = 'D1'")[0]
    assert stored["token_hash"] == hash_secret(device.token or "") and stored["model"] == "Pixel"
    assert (await device.post("/ota/api/agent/checkin", CHECKIN)).status == 200


async def test_new_registration_revokes_old_token(admin: Client) -> None:
    """Registering again issues a new token; the old one is 40100."""
    first = await enroll(admin, "D1")
    second = await enroll(admin, "D1")
    assert (await first.post("/ota/api/agent/checkin", CHECKIN)).code == 40100
    assert (await second.post("/ota/api/agent/checkin", CHECKIN)).status == 200


async def test_first_checkin_enrolls(admin: Client, clock: FixedClock) -> None:
    """A check-in sets enrolled, lastCheckedIn, clientVersion and presence online."""
    device = await enroll(admin, "D1")
    reply = await device.post("/ota/api/agent/checkin", CHECKIN)
    assert reply.data["nextCheckinSeconds"] == 60 and reply.data["inventoryWanted"] is True
    assert reply.data["serverTime"] == "2026-09-21T14:13:20.000Z" and reply.data["profiles"] == []
    found = (await admin.get("/ota/api/device/findBy", serialNo="D1")).data
    assert found["enrolled"] == "2026-09-21T14:13:20.000Z"
    assert found["lastCheckedIn"] == "2026-09-21T14:13:20.000Z"
    assert found["states"] == {"clientVersion": 3, "rtcEnabled": False, "state": "online"}
    clock.advance(60 + 181)
    assert (await admin.get("/ota/api/device/findBy", serialNo="D1")).data["states"][
        "state"
    ] == "offline"


async def test_sleeping_device_is_standby(admin: Client, clock: FixedClock) -> None:
    """A sleeping device is told to come back in 20 min and shows as standby until then."""
    device = await enroll(admin, "D1")
    reply = await device.post("/ota/api/agent/checkin", {**CHECKIN, "activity": "sleeping"})
    assert reply.data["nextCheckinSeconds"] == 1200
    clock.advance(1000)
    assert (await admin.get("/ota/api/device/findBy", serialNo="D1")).data["states"][
        "state"
    ] == "standby"
    found = await admin.get("/ota/api/device/find", filter=json.dumps({"states.state": "standby"}))
    assert found.body["totalSize"] == 1


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ("{bad", 40000, "not valid JSON"),
        ("[]", 40000, "must be a JSON object"),
        (json.dumps({**CHECKIN, "states": {"clientVersion": "3"}}), 40001, "states.clientVersion"),
        (json.dumps({**CHECKIN, "power": {"battery": "full"}}), 40001, "power.battery"),
        (
            json.dumps({**CHECKIN, "build": {**BUILD, "buildDate": "yesterday"}}),
            40001,
            "build.buildDate",
        ),
        (json.dumps({**CHECKIN, "build": "v1"}), 40001, "build: must be an object"),
        (json.dumps({**CHECKIN, "inventoryHash": 5}), 40001, "inventoryHash"),
    ],
)
async def test_bad_checkins_change_nothing(
    server: Server, admin: Client, body: str, code: int, needle: str
) -> None:
    """Malformed or mistyped check-ins are rejected naming the field; nothing is enrolled."""
    device = await enroll(admin, "D1")
    reply = await device.call("POST", "/ota/api/agent/checkin", raw=body.encode())
    assert reply.code == code and needle in reply.body["message"], reply.body
    server_row = server.sql("SELECT enrolled, last_checked_in FROM devices WHERE serial_no = 'D1'")[
        0
    ]
    assert tuple(server_row) == (None, None)


async def test_admin_resave_revokes_the_device(admin: Client) -> None:
    """After an admin re-saves the serial, the device token is 40100 until it registers."""
    device = await enroll(admin, "D1")
    await device.post("/ota/api/agent/checkin", CHECKIN)
    await admin.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "D1"}}}])
    assert (await device.post("/ota/api/agent/checkin", CHECKIN)).code == 40100
    again = await enroll(admin, "D1")
    assert (await again.post("/ota/api/agent/checkin", CHECKIN)).status == 200


async def test_heartbeats_are_batched_and_not_lost(
    server_factory: StartServer, http: aiohttp.ClientSession, clock: FixedClock
) -> None:
    """A time-only check-in is not written at once, but is written by the batch at shutdown."""
    server = await server_factory(checkin_flush_s=3600)
    site = server.sites["alpha"]
    admin = Client(http, server.base, site.key)
    await admin.login(site.email, site.password)
    device = await enroll(admin, "D1")
    await device.post("/ota/api/agent/checkin", CHECKIN)  # a change: written before the answer
    first = server.sql("SELECT last_checked_in FROM devices WHERE serial_no = 'D1'")[0][0]
    assert first == NOW_MS
    clock.advance(30)
    await device.post("/ota/api/agent/checkin", CHECKIN)  # time only: batched
    assert server.sql("SELECT last_checked_in FROM devices WHERE serial_no = 'D1'")[0][0] == first
    await server.stop()
    assert (
        server.sql("SELECT last_checked_in FROM devices WHERE serial_no = 'D1'")[0][0]
        == NOW_MS + 30_000
    )


async def test_inventory_hash_drives_inventory_wanted(admin: Client) -> None:
    """inventoryWanted until an inventory is stored; again when the hash changes."""
    device = await enroll(admin, "D1")
    assert (await device.post("/ota/api/agent/checkin", CHECKIN)).data["inventoryWanted"] is True
    apps = [{"packageName": "com.example.basic", "versionCode": 2, "label": "Basic"}]
    put = await device.call(
        "PUT", "/ota/api/agent/apps", json_body={"category": "user", "apps": apps}
    )
    assert put.status == 200 and put.data["apps"][0]["packageName"] == "com.example.basic"
    assert (await device.post("/ota/api/agent/checkin", CHECKIN)).data["inventoryWanted"] is False
    changed = {**CHECKIN, "inventoryHash": "h2"}
    assert (await device.post("/ota/api/agent/checkin", changed)).data["inventoryWanted"] is True
    installed = (await admin.get("/ota/api/device/app/installed", serialNo="D1")).data
    assert installed["category"] == "user" and installed["apps"][0]["versionCode"] == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"apps": [{"versionCode": 1}]}, 40001),
        ({"apps": [{"packageName": "a"}, {"packageName": "a"}]}, 40001),
        ({"apps": [{"packageName": "a", "versionCode": "1"}]}, 40001),
        ({"category": "everything", "apps": []}, 40001),
        ({"apps": "none"}, 40001),
        ({}, 40001),
    ],
)
async def test_bad_inventories_write_nothing(
    server: Server, admin: Client, body: dict[str, Any], code: int
) -> None:
    """An invalid inventory is 40001 and nothing is stored."""
    device = await enroll(admin, "D1")
    reply = await device.call("PUT", "/ota/api/agent/apps", json_body=body)
    assert reply.code == code
    assert server.sql("SELECT COUNT(*) FROM app_inventory")[0][0] == 0


async def test_oversize_inventory_is_41300(server: Server, admin: Client) -> None:
    """A 10 MB inventory is refused with 41300 while reading; nothing is stored."""
    device = await enroll(admin, "D1")
    big = {
        "apps": [
            {"packageName": f"com.example.p{i:07d}", "label": "x" * 200} for i in range(40_000)
        ]
    }
    reply = await device.call("PUT", "/ota/api/agent/apps", json_body=big)
    assert (reply.status, reply.code) == (413, 41300)
    assert server.sql("SELECT COUNT(*) FROM app_inventory")[0][0] == 0


async def test_profiles_in_scope(admin: Client) -> None:
    """Global, group (with child groups) and serial scope; disabled profiles are not listed."""
    top = await make_group(admin, "top")
    child = await make_group(admin, "child", top)
    device = await enroll(admin, "D1", group=child)
    saved = {}
    bodies: dict[str, dict[str, Any]] = {
        "global": {"isGlobal": True},
        "group": {"scope": {"group": [top]}},
        "serial": {"scope": {"device": ["D1"]}},
        "other": {"scope": {"device": ["D2"]}},
        "disabled": {"isGlobal": True, "enabled": False},
    }
    for name, body in bodies.items():
        reply = await admin.post("/ota/api/profile/save", {**body, "profile": {"name": name}})
        saved[name] = reply.data
    checkin = (await device.post("/ota/api/agent/checkin", CHECKIN)).data
    assert {p["uuid"] for p in checkin["profiles"]} == {
        saved[n]["uuid"] for n in ("global", "group", "serial")
    }
    listed = (await device.get("/ota/api/agent/profiles")).data
    assert sorted(p["profile"]["name"] for p in listed) == ["global", "group", "serial"]
    assert all(p["progress"]["status"] == "pending" for p in listed)


async def test_image_feed_over_http(admin: Client) -> None:
    """ota/next feeds the image for the device's reported build, and says why not otherwise."""
    base = {
        "ota-type": "AB",
        "pre-device": "walleye",
        "post-timestamp": "1800000000",
        "post-build": "acme/walleye/walleye:15/X/200:user/release-keys",
    }
    mine = (await admin.upload("/ota/api/ota/upload", ota_zip(base), "mine.zip")).data
    foreign = (
        await admin.upload(
            "/ota/api/ota/upload", ota_zip({**base, "pre-device": "taimen"}), "foreign.zip"
        )
    ).data
    feeds = (
        await admin.post(
            "/ota/api/profile/save", {"scope": {"device": ["D1"]}, "otas": [mine["fileUuid"]]}
        )
    ).data
    wrong = (
        await admin.post(
            "/ota/api/profile/save", {"scope": {"device": ["D1"]}, "otas": [foreign["fileUuid"]]}
        )
    ).data
    elsewhere = (await admin.post("/ota/api/profile/save", {"scope": {"device": ["D9"]}})).data
    device = await enroll(admin, "D1")
    await device.post("/ota/api/agent/checkin", CHECKIN)
    fed = (await device.get("/ota/api/agent/ota/next", profileUuid=feeds["uuid"])).data
    assert fed["ota"]["fileUuid"] == mine["fileUuid"] and fed["reason"] == "full"
    none = (await device.get("/ota/api/agent/ota/next", profileUuid=wrong["uuid"])).data
    assert none == {"ota": None, "reason": "not_for_device", "target": None}
    assert (
        await device.get("/ota/api/agent/ota/next", profileUuid=elsewhere["uuid"])
    ).code == 42200
    assert (await device.get("/ota/api/agent/ota/next", profileUuid="nope")).code == 40400
    assert (await device.get("/ota/api/agent/ota/next")).code == 40001


async def test_image_feed_waits_for_the_start(admin: Client) -> None:
    """Before startsOn, ota/next feeds nothing with reason not_before."""
    base = {
        "ota-type": "AB",
        "pre-device": "walleye",
        "post-timestamp": "1800000000",
        "post-build": "acme/walleye/walleye:15/X/200:user/release-keys",
    }
    image = (await admin.upload("/ota/api/ota/upload", ota_zip(base), "i.zip")).data
    later = (
        await admin.post(
            "/ota/api/profile/save",
            {
                "scope": {"device": ["D1"]},
                "otas": [image["fileUuid"]],
                "profile": {"startsOn": "2026-09-22T00:00:00Z"},
            },
        )
    ).data
    device = await enroll(admin, "D1")
    await device.post("/ota/api/agent/checkin", CHECKIN)
    reply = (await device.get("/ota/api/agent/ota/next", profileUuid=later["uuid"])).data
    assert reply == {"ota": None, "reason": "not_before", "target": None}


async def test_events_are_idempotent_and_drive_status(server: Server, admin: Client) -> None:
    """A retried batch is stored once; progress, AppStatus, inventory and logs follow events."""
    profile = (await admin.post("/ota/api/profile/save", {"scope": {"device": ["D1"]}})).data[
        "uuid"
    ]
    device = await enroll(admin, "D1")
    batch = [
        event(profile, "app", "downloading", target="com.example.basic"),
        event(profile, "app", "installed", target="com.example.basic", versionCode=2),
        event(profile, "profile", "applied"),
    ]
    for _ in range(2):
        reply = await device.post("/ota/api/agent/events", batch)
        assert reply.status == 200 and reply.data == 3
    assert server.sql("SELECT COUNT(*) FROM events")[0][0] == 3
    status = (await admin.get("/ota/api/profile/status", uuid=profile)).data
    assert (status["scoped"], status["applied"]) == (1, 1)
    app = (
        await admin.get(
            "/ota/api/device/app/status", serialNo="D1", packageName="com.example.basic"
        )
    ).data
    assert (app["installed"], app["versionCode"]) == (True, 2)
    logs = await admin.get("/ota/api/logs/find", filter=json.dumps({"forWhat": profile}))
    assert logs.body["totalSize"] == 3


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda e: e.update(id="not-a-uuid"), 40001),
        (lambda e: e.update(kind="firmware"), 40001),
        (lambda e: e.update(status="done"), 40001),
        (lambda e: e.pop("at"), 40001),
        (lambda e: e.update(versionCode="2"), 40001),
        (lambda e: e.update(profileUuid="not-my-profile"), 42200),
    ],
)
async def test_bad_event_batches_store_nothing(
    server: Server, admin: Client, mutate: Any, code: int
) -> None:
    """One bad event rejects the batch (40001), as does a foreign profile (42200)."""
    device = await enroll(admin, "D1")
    bad = event(None, "app", "installed", target="x")
    mutate(bad)
    reply = await device.post(
        "/ota/api/agent/events", [event(None, "app", "installed", target="y"), bad]
    )
    assert reply.code == code, reply.body
    assert server.sql("SELECT COUNT(*) FROM events")[0][0] == 0


async def test_unscope_if_applied_and_remove_if_no_scope(admin: Client) -> None:
    """An applied device leaves scope.device; the profile goes when removeIfNoScope empties it."""
    keep = (
        await admin.post(
            "/ota/api/profile/save",
            {"scope": {"device": ["D1", "D2"]}, "profile": {"unscopeIfApplied": True}},
        )
    ).data["uuid"]
    drop = (
        await admin.post(
            "/ota/api/profile/save",
            {
                "scope": {"device": ["D1"]},
                "profile": {"unscopeIfApplied": True, "removeIfNoScope": True},
            },
        )
    ).data["uuid"]
    device = await enroll(admin, "D1")
    await device.post(
        "/ota/api/agent/events",
        [event(keep, "profile", "applied"), event(drop, "profile", "applied")],
    )
    kept = (await admin.get("/ota/api/profile/findBy", uuid=keep)).data
    assert kept["scope"]["device"] == ["D2"]
    assert (await admin.get("/ota/api/profile/findBy", uuid=drop)).code == 40400
    checkin = (await device.post("/ota/api/agent/checkin", CHECKIN)).data
    assert checkin["profiles"] == []
    retry = await device.post("/ota/api/agent/events", [event(keep, "profile", "applied")])
    assert retry.status == 200  # a profile that covered the device still takes its reports
