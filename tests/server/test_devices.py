"""§3 devices: exists, save with the reset-on-resave rule, findBy, find with paging and filters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import NOW_MS, Client, Server
from tests.server.test_groups import make_group


def device(serial: str, **extra: Any) -> dict[str, Any]:
    return {
        "profile": {
            "hardware_info": {
                "serial_no": serial,
                "manufacturer": "Acme",
                "brand": "AB",
                "model": extra.pop("model", "M1"),
            }
        },
        "enabled": True,
        **extra,
    }


async def save(client: Client, *devices: dict[str, Any], **params: str) -> None:
    reply = await client.post("/ota/api/device/save", list(devices), **params)
    assert reply.status == 200, reply.body
    assert "data" not in reply.body


async def test_exists_then_save(admin: Client) -> None:
    """exists is false before save and true after; the saved device reads back with seed fields."""
    assert (await admin.get("/ota/api/device/exists", serialNo="S1")).data is False
    await save(admin, device("S1"))
    assert (await admin.get("/ota/api/device/exists", serialNo="S1")).data is True
    found = (await admin.get("/ota/api/device/findBy", serialNo="S1")).data
    assert found["profile"]["hardware_info"] == {
        "serial_no": "S1",
        "manufacturer": "Acme",
        "brand": "AB",
        "model": "M1",
    }
    assert found["states"] == {"clientVersion": 0, "rtcEnabled": False, "state": "offline"}
    assert found["enrolled"] is None and found["lastCheckedIn"] is None
    assert found["enabled"] is True and found["deviceGroup"] is None
    assert (await admin.get("/ota/api/device/findBy", uuid=found["uuid"])).data == found


async def test_exists_needs_serial(admin: Client) -> None:
    """exists without a non-empty serialNo is 40001 naming it."""
    for params in ({}, {"serialNo": ""}, {"serialNo": "  "}):
        reply = await admin.get("/ota/api/device/exists", **params)
        assert reply.code == 40001 and "serialNo" in reply.body["message"]


async def test_resave_resets_status(server: Server, admin: Client) -> None:
    """Re-saving a serial resets states, enrolled, lastCheckedIn, token and progress [seed]."""
    await save(admin, device("S1"))
    row = server.sql("SELECT uuid, created FROM devices WHERE serial_no = 'S1'")[0]
    server.sql(
        "UPDATE devices SET state = 'online', client_version = 7, rtc_enabled = 1, enrolled = ?, "
        "last_checked_in = ?, token_hash = 'h' WHERE uuid = ?",
        NOW_MS,
        NOW_MS,
        row["uuid"],
    )
    server.sql(
        "INSERT INTO profiles (uuid, site_uuid, name, enabled, is_global, doc, created, updated) "
        "VALUES ('p1', ?, 'p', 1, 1, '{}', 0, 0)",
        server.sites["alpha"].uuid,
    )
    server.sql("INSERT INTO profile_progress VALUES ('p1', ?, 'applied', '', 0)", row["uuid"])
    before = (await admin.get("/ota/api/device/findBy", serialNo="S1")).data
    assert before["states"]["state"] == "online" and before["enrolled"] is not None
    await save(admin, device("S1", model="M2"))
    after = (await admin.get("/ota/api/device/findBy", serialNo="S1")).data
    assert after["uuid"] == before["uuid"] and after["created"] == before["created"]
    assert after["states"] == {"clientVersion": 0, "rtcEnabled": False, "state": "offline"}
    assert after["enrolled"] is None and after["lastCheckedIn"] is None
    assert after["profile"]["hardware_info"]["model"] == "M2"
    assert server.sql("SELECT token_hash FROM devices WHERE uuid = ?", row["uuid"])[0][0] is None
    assert server.sql("SELECT COUNT(*) FROM profile_progress")[0][0] == 0


async def test_save_stores_license_query(server: Server, admin: Client) -> None:
    """licenseModelUuid and autoRenew query parameters are accepted and stored."""
    await save(admin, device("S1"), licenseModelUuid="lic-1", autoRenew="true")
    found = (await admin.get("/ota/api/device/findBy", serialNo="S1")).data
    assert found["licenseModelUuid"] == "lic-1" and found["autoRenew"] is True
    reply = await admin.post("/ota/api/device/save", [device("S2")], autoRenew="maybe")
    assert reply.code == 40001 and "autoRenew" in reply.body["message"]


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({"profile": {}}, 40000, "must be a JSON array"),
        ([], 40001, "empty"),
        ([device("A"), device("A")], 40001, "appears twice"),
        (
            [device("A"), {"profile": {"hardware_info": {}}}],
            40001,
            "[1].profile.hardware_info.serial_no: is required",
        ),
        (
            [device("A"), {"profile": {"hardware_info": {"serial_no": 12}}}],
            40001,
            "must be a string",
        ),
        ([device("A"), {"enabled": True}], 40001, "[1].profile: is required"),
        ([device("A"), device("B", enabled="no")], 40001, "[1].enabled"),
        ([device("A"), device("B", groupUuid="nope")], 40001, "[1].groupUuid: no device group"),
        ([device("A"), "x"], 40001, "[1]: must be an object"),
        ([device(f"S{i}") for i in range(1001)], 40001, "at most 1000"),
    ],
)
async def test_invalid_batches_write_nothing(
    server: Server, admin: Client, body: Any, code: int, needle: str
) -> None:
    """A batch with one bad item is rejected whole, naming the item and field; nothing is saved."""
    reply = await admin.post("/ota/api/device/save", body)
    assert reply.code == code, reply.body
    assert needle in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM devices")[0][0] == 0


async def test_find_by_unknown_and_missing(admin: Client) -> None:
    """findBy of an unknown device is 40400; without uuid or serialNo, 40001."""
    assert (await admin.get("/ota/api/device/findBy", uuid="nope")).code == 40400
    assert (await admin.get("/ota/api/device/findBy", serialNo="nope")).code == 40400
    assert (await admin.get("/ota/api/device/findBy")).code == 40001


async def test_find_paging_edges(admin: Client) -> None:
    """Empty site, full pages, the last partial page, a page past the end, size bounds."""
    empty = await admin.get("/ota/api/device/find")
    assert empty.data == [] and (empty.body["totalSize"], empty.body["totalPage"]) == (0, 0)
    assert empty.body["size"] == 20
    await save(admin, *[device(f"S{i:02d}") for i in range(45)])
    first = await admin.get("/ota/api/device/find", size="20", sortBy="serialNo")
    assert (first.body["totalSize"], first.body["totalPage"], len(first.data)) == (45, 3, 20)
    last = await admin.get("/ota/api/device/find", size="20", page="2", sortBy="serialNo")
    assert [d["profile"]["hardware_info"]["serial_no"] for d in last.data] == [
        f"S{i}" for i in range(40, 45)
    ]
    past = await admin.get("/ota/api/device/find", size="20", page="3")
    assert past.data == [] and past.body["totalSize"] == 45
    whole = await admin.get("/ota/api/device/find", size="500")
    assert len(whole.data) == 45
    pages = [await admin.get("/ota/api/device/find", size="10", page=str(p)) for p in range(5)]
    seen = [d["uuid"] for page in pages for d in page.data]
    assert len(seen) == len(set(seen)) == 45
    for params in (
        {"size": "0"},
        {"size": "501"},
        {"page": "-1"},
        {"size": "ten"},
        {"direction": "up"},
        {"sortBy": "password"},
    ):
        reply = await admin.get("/ota/api/device/find", **params)
        assert reply.code == 40001, params
        assert next(iter(params)) in reply.body["message"]


async def test_find_sort_directions(admin: Client) -> None:
    """sortBy a field path with direction asc and desc."""
    await save(admin, *[device(f"S{i}") for i in (3, 1, 2)])
    for direction, expected in (("asc", ["S1", "S2", "S3"]), ("desc", ["S3", "S2", "S1"])):
        reply = await admin.get(
            "/ota/api/device/find", sortBy="profile.hardware_info.serial_no", direction=direction
        )
        assert [d["profile"]["hardware_info"]["serial_no"] for d in reply.data] == expected


async def test_find_filters(server: Server, admin: Client) -> None:
    """Each documented filter key narrows the list; a list means any of."""
    g1 = await make_group(admin, "g1")
    g2 = await make_group(admin, "g2")
    await save(
        admin,
        device("A", groupUuid=g1, model="X"),
        device("B", groupUuid=g2, model="Y"),
        device("C", model="X"),
        device("D", enabled=False, model="Z"),
    )
    server.sql(
        "UPDATE devices SET state = 'online', last_checked_in = ? WHERE serial_no = 'A'", NOW_MS
    )
    server.sql("UPDATE devices SET last_checked_in = ? WHERE serial_no = 'B'", NOW_MS - 3_600_000)

    async def serials(flt: dict[str, Any]) -> list[str]:
        reply = await admin.get("/ota/api/device/find", filter=json.dumps(flt), sortBy="serialNo")
        assert reply.status == 200, reply.body
        return [d["profile"]["hardware_info"]["serial_no"] for d in reply.data]

    assert await serials({"deviceGroup.uuid": [g1, g2]}) == ["A", "B"]
    assert await serials({"deviceGroup.uuid": g2}) == ["B"]
    assert await serials({"serialNo": ["C", "D", "zzz"]}) == ["C", "D"]
    assert await serials({"states.state": "online"}) == ["A"]
    assert await serials({"states.state": ["offline", "standby"]}) == ["B", "C", "D"]
    assert await serials({"enabled": False}) == ["D"]
    assert await serials({"profile.hardware_info.model": "X"}) == ["A", "C"]
    assert await serials({"lastCheckedInAfter": NOW_MS - 60_000}) == ["A"]
    assert await serials({"lastCheckedInBefore": "2026-09-21T14:00:00.000Z"}) == ["B"]
    assert await serials({"deviceGroup.uuid": [], "enabled": True}) == []


@pytest.mark.parametrize(
    ("flt", "needle"),
    [
        ("{not json", "filter: is not valid JSON"),
        ("[1]", "filter: must be a JSON object"),
        ('{"password": "x"}', "unknown field 'password'"),
        ('{"enabled": "yes"}', "filter.enabled"),
        ('{"serialNo": 5}', "filter.serialNo"),
        ('{"serialNo": {"a": 1}}', "filter.serialNo"),
        ('{"lastCheckedInAfter": "yesterday"}', "filter.lastCheckedInAfter"),
        ('{"lastCheckedInAfter": [1, 2]}', "filter.lastCheckedInAfter"),
    ],
)
async def test_bad_filters(admin: Client, flt: str, needle: str) -> None:
    """A malformed or unknown filter is 40001 naming what was wrong."""
    reply = await admin.get("/ota/api/device/find", filter=flt)
    assert (reply.status, reply.code) == (400, 40001)
    assert needle in reply.body["message"]


async def test_devices_are_per_site(admin: Client, other: Client) -> None:
    """The same serial may exist in two sites; each site sees only its own device."""
    await save(admin, device("SAME", model="alpha-model"))
    assert (await other.get("/ota/api/device/exists", serialNo="SAME")).data is False
    await save(other, device("SAME", model="beta-model"))
    mine = (await admin.get("/ota/api/device/findBy", serialNo="SAME")).data
    theirs = (await other.get("/ota/api/device/findBy", serialNo="SAME")).data
    assert mine["uuid"] != theirs["uuid"]
    assert mine["profile"]["hardware_info"]["model"] == "alpha-model"
    assert (await other.get("/ota/api/device/findBy", uuid=mine["uuid"])).code == 40400
    assert (await other.get("/ota/api/device/find")).body["totalSize"] == 1


async def test_device_in_other_sites_group_is_rejected(admin: Client, other: Client) -> None:
    """groupUuid of another site's group is 'no device group' (40001)."""
    foreign = await make_group(other, "theirs")
    reply = await admin.post("/ota/api/device/save", [device("S", groupUuid=foreign)])
    assert reply.code == 40001
