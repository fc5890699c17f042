"""§5 profiles: save (defaults, default name, references, auto-registered serials), reads, edit
with the stale-update check, and status counts over the scope (groups include child groups)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import NOW_MS, Client, Server, ota_zip
from tests.server.test_groups import make_group
from tests.server.test_otas import FULL_META


async def save_profile(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    reply = await client.post("/ota/api/profile/save", body)
    assert reply.status == 200, reply.body
    data: dict[str, Any] = reply.data
    return data


async def test_minimal_profile_gets_defaults_and_name(server: Server, admin: Client) -> None:
    """No name -> yyyyMMdd_HH:mm:ss of the save time (UTC); every field shows its default."""
    saved = await save_profile(admin, {})
    assert saved["name"] == "20260921_14:13:20" and saved["updated"] == NOW_MS
    loaded = (await admin.get("/ota/api/profile/findBy", uuid=saved["uuid"])).data
    assert loaded["uuid"] == saved["uuid"] and loaded["updated"] == NOW_MS
    assert (
        loaded["siteUuid"] == server.sites["alpha"].uuid
        and loaded["writer"]["email"] == "admin@alpha.test"
    )
    section = loaded["profile"]
    assert section["name"] == saved["name"] and section["applyOrder"] == "none"
    assert section["applyWhile"] == {"sleeping": True, "offline": False}
    assert (
        section["updateVia"],
        section["repeatOption"],
        section["endsOption"],
        section["timeOption"],
    ) == ("any", "none", "never", "anytime")
    assert loaded["settings"]["otas"] == {
        "silent_install": True,
        "partialFirst": False,
        "need_ac": False,
        "checkBuildDate": True,
    }
    assert loaded["isGlobal"] is False and loaded["enabled"] is True
    assert loaded["scope"] == {"group": [], "device": []} and loaded["otas"] == []


async def test_full_profile_round_trips(admin: Client) -> None:
    """Every field of the seed's body is stored as given (times normalised to ISO-8601 UTC)."""
    app = (await admin.upload_apk("basic-v1.apk")).data["fileUuid"]
    ota = (await admin.upload("/ota/api/ota/upload", ota_zip(FULL_META), "o.zip")).data["fileUuid"]
    group = await make_group(admin, "lab")
    body = {
        "isGlobal": False,
        "profile": {
            "name": "rollout",
            "applyOrder": "otas",
            "removeIfNoScope": True,
            "unscopeIfApplied": True,
            "applyWhile": {"sleeping": False, "offline": True},
            "startsOn": "2026-10-01T08:00:00+02:00",
            "updateVia": "wifi",
            "repeatOption": "weekly",
            "endsOption": "after",
            "ends": 3,
            "repeatEvery": 2,
            "repeatPeriod": "week",
            "timeOption": "01:00-05:30",
            "wakeToApply": True,
        },
        "scope": {"group": [group], "device": ["NEW-1"]},
        "apps": {
            "install": [
                {
                    "uuid": app,
                    "starts_on_update": True,
                    "silent_install": False,
                    "grant_all": True,
                    "reboots_on_update": True,
                }
            ]
        },
        "otas": [ota],
        "schedule_date": {"start_on": NOW_MS + 60_000},
        "settings": {
            "otas": {
                "silent_install": False,
                "partialFirst": True,
                "need_ac": True,
                "checkBuildDate": False,
            },
            "wifi": {"ssid": "lab"},
        },
    }
    saved = await save_profile(admin, body)
    loaded = (await admin.get("/ota/api/profile/findBy", uuid=saved["uuid"])).data
    assert loaded["profile"]["startsOn"] == "2026-10-01T06:00:00.000Z"
    assert loaded["schedule_date"]["start_on"] == "2026-09-21T14:14:20.000Z"
    expected_section = {**body["profile"], "startsOn": "2026-10-01T06:00:00.000Z"}  # type: ignore[dict-item]
    assert loaded["profile"] == expected_section
    for key in ("scope", "apps", "otas", "settings", "isGlobal"):
        assert loaded[key] == body[key], key


async def test_scope_serials_are_registered_without_reset(server: Server, admin: Client) -> None:
    """A serial in scope.device that is no device yet is saved at once; others untouched."""
    await admin.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "OLD"}}}])
    server.sql("UPDATE devices SET last_checked_in = ? WHERE serial_no = 'OLD'", NOW_MS)
    await save_profile(admin, {"scope": {"device": ["OLD", "NEW"]}})
    assert (await admin.get("/ota/api/device/exists", serialNo="NEW")).data is True
    old = (await admin.get("/ota/api/device/findBy", serialNo="OLD")).data
    assert old["states"]["state"] == "online"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            {"apps": {"install": [{"uuid": "no-such-app"}]}},
            "apps.install[].uuid: no app 'no-such-app'",
        ),
        ({"otas": ["no-such-image"]}, "otas[]: no OTA image 'no-such-image'"),
        ({"otas": [{"uuid": "no-such-image"}]}, "otas[]: no OTA image"),
        ({"scope": {"group": ["no-such-group"]}}, "scope.group[]: no device group"),
        ({"profile": {"applyOrder": "random"}}, "profile.applyOrder"),
        ({"profile": {"timeOption": "25:00-26:00"}}, "profile.timeOption"),
        ({"profile": {"endsOption": "on"}}, "profile.ends: is required"),
        ({"profile": {"endsOption": "after", "ends": 0}}, "profile.ends: must be at least 1"),
        ({"profile": {"startsOn": "next tuesday"}}, "profile.startsOn"),
        ({"profile": {"repeatEvery": "2"}}, "profile.repeatEvery: must be an integer"),
        ({"profile": {"updateVia": "carrier pigeon"}}, "profile.updateVia"),
        ({"profile": {"applyWhile": {"sleeping": "no"}}}, "profile.applyWhile.sleeping"),
        ({"isGlobal": "yes"}, "isGlobal"),
        ({"scope": {"device": ["A", "A"]}}, "scope.device[1]: 'A' is listed twice"),
        ({"scope": {"device": [""]}}, "scope.device[0]"),
        ({"scope": {"device": "A"}}, "scope.device: must be an array"),
        ({"apps": {"install": [{"grant_all": True}]}}, "apps.install[0].uuid: is required"),
        ({"settings": {"otas": {"need_ac": 1}}}, "settings.otas.need_ac"),
        ({"schedule_date": {"start_on": True}}, "schedule_date.start_on"),
        ({"uuid": "x"}, "use profile/edit"),
        ({"otas": [5]}, "otas[0]"),
    ],
)
async def test_invalid_profiles_write_nothing(
    server: Server, admin: Client, body: dict[str, Any], needle: str
) -> None:
    """Each invalid field or unknown reference is 40001 naming it; no profile or device is saved."""
    if "scope" not in body:
        body["scope"] = {"device": ["WOULD-BE-REGISTERED"]}
    reply = await admin.post("/ota/api/profile/save", body)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert needle in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM profiles")[0][0] == 0
    assert server.sql("SELECT COUNT(*) FROM devices")[0][0] == 0


async def test_other_sites_app_cannot_be_named(admin: Client, other: Client) -> None:
    """An app uploaded to another site is unknown here."""
    foreign = (await other.upload_apk("basic-v1.apk")).data["fileUuid"]
    reply = await admin.post("/ota/api/profile/save", {"apps": {"install": [{"uuid": foreign}]}})
    assert reply.code == 40001


async def test_edit_replaces_and_detects_stale_updates(server: Server, admin: Client) -> None:
    """Edit with the loaded `updated` replaces the profile; a 2nd edit of that load is 40900."""
    saved = await save_profile(admin, {"profile": {"name": "v1"}})
    loaded = (await admin.get("/ota/api/profile/findBy", uuid=saved["uuid"])).data
    loaded["profile"]["name"] = "v2"
    loaded["scope"] = {"device": ["X1"]}
    edited = await admin.post("/ota/api/profile/edit", loaded, uuid=saved["uuid"])
    assert edited.status == 200, edited.body
    assert edited.data["profile"]["name"] == "v2" and edited.data["updated"] > loaded["updated"]
    assert edited.data["scope"]["device"] == ["X1"]
    stale = dict(loaded, profile={**loaded["profile"], "name": "v3"})
    conflict = await admin.post("/ota/api/profile/edit", stale, uuid=saved["uuid"])
    assert (conflict.status, conflict.code) == (409, 40900)
    current = (await admin.get("/ota/api/profile/findBy", uuid=saved["uuid"])).data
    assert current["profile"]["name"] == "v2"


async def test_edit_errors(admin: Client, other: Client) -> None:
    """Edit without updated is 40001; unknown or foreign uuid 40400; mismatched body uuid 40001."""
    saved = await save_profile(admin, {})
    loaded = (await admin.get("/ota/api/profile/findBy", uuid=saved["uuid"])).data
    missing = await admin.post(
        "/ota/api/profile/edit",
        {k: v for k, v in loaded.items() if k != "updated"},
        uuid=saved["uuid"],
    )
    assert missing.code == 40001 and "updated" in missing.body["message"]
    anonymous = {k: v for k, v in loaded.items() if k != "uuid"}
    assert (await admin.post("/ota/api/profile/edit", anonymous, uuid="nope")).code == 40400
    assert (await other.post("/ota/api/profile/edit", loaded, uuid=saved["uuid"])).code == 40400
    assert (await admin.post("/ota/api/profile/edit", loaded)).code == 40001
    mismatch = await admin.post(
        "/ota/api/profile/edit", dict(loaded, uuid="other"), uuid=saved["uuid"]
    )
    assert mismatch.code == 40001
    iso_updated = dict(loaded, updated="2026-09-21T14:13:20.000Z")
    assert (
        await admin.post("/ota/api/profile/edit", iso_updated, uuid=saved["uuid"])
    ).status == 200


async def test_all_find_and_isolation(admin: Client, other: Client) -> None:
    """profile/all and profile/find list the site's profiles only; find filters by name/isGlobal."""
    await save_profile(admin, {"profile": {"name": "a"}})
    await save_profile(admin, {"profile": {"name": "b"}, "isGlobal": True})
    assert [p["profile"]["name"] for p in (await admin.get("/ota/api/profile/all")).data] == [
        "a",
        "b",
    ]
    found = await admin.get("/ota/api/profile/find", filter=json.dumps({"isGlobal": True}))
    assert [p["profile"]["name"] for p in found.data] == ["b"] and found.body["totalSize"] == 1
    by_name = await admin.get("/ota/api/profile/find", filter=json.dumps({"name": ["a"]}))
    assert by_name.body["totalSize"] == 1
    assert (await other.get("/ota/api/profile/all")).data == []
    uuid = found.data[0]["uuid"]
    assert (await other.get("/ota/api/profile/findBy", uuid=uuid)).code == 40400
    assert (await other.get("/ota/api/profile/status", uuid=uuid)).code == 40400


async def test_status_counts_scope_with_child_groups(server: Server, admin: Client) -> None:
    """Scope = listed serials + devices of listed groups and their children; counts by progress."""
    top = await make_group(admin, "top")
    child = await make_group(admin, "child", top)
    elsewhere = await make_group(admin, "elsewhere")
    devices = [("T1", top), ("C1", child), ("C2", child), ("E1", elsewhere), ("L1", None)]
    await admin.post(
        "/ota/api/device/save",
        [
            {"profile": {"hardware_info": {"serial_no": s}}, **({"groupUuid": g} if g else {})}
            for s, g in devices
        ],
    )
    saved = await save_profile(admin, {"scope": {"group": [top], "device": ["L1"]}})
    for serial, state in (("T1", "applied"), ("C1", "failed")):
        server.sql(
            "INSERT INTO profile_progress SELECT ?, uuid, ?, 'r', ? FROM devices "
            "WHERE serial_no = ?",
            saved["uuid"],
            state,
            NOW_MS,
            serial,
        )
    reply = await admin.get("/ota/api/profile/status", uuid=saved["uuid"], size="2")
    data = reply.data
    assert {
        k: data[k] for k in ("scoped", "pending", "deferred", "applying", "applied", "failed")
    } == {"scoped": 4, "pending": 2, "deferred": 0, "applying": 0, "applied": 1, "failed": 1}
    assert reply.body["totalSize"] == 4 and reply.body["totalPage"] == 2
    assert [r["serialNo"] for r in data["devices"]] == ["C1", "C2"]
    assert data["devices"][0]["status"] == "failed"
    second = await admin.get("/ota/api/profile/status", uuid=saved["uuid"], size="2", page="1")
    assert [r["serialNo"] for r in second.data["devices"]] == ["L1", "T1"]


async def test_status_of_global_profile_covers_site(admin: Client, other: Client) -> None:
    """A global profile scopes every device of its site and none of another."""
    await admin.post(
        "/ota/api/device/save",
        [{"profile": {"hardware_info": {"serial_no": f"S{i}"}}} for i in range(3)],
    )
    await other.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "B"}}}])
    saved = await save_profile(admin, {"isGlobal": True, "scope": {"device": []}})
    reply = await admin.get("/ota/api/profile/status", uuid=saved["uuid"])
    assert reply.data["scoped"] == 3 and reply.data["pending"] == 3
    assert (await admin.get("/ota/api/profile/status")).code == 40001
