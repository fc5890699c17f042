"""§3 device groups: create, update, nesting, cycle rejection, deviceNumbers, findBy, all."""

from __future__ import annotations

import pytest

from tests.helpers import Client, Server


async def make_group(client: Client, name: str, parent: str | None = None) -> str:
    body: dict[str, object] = {"profile": {"name": name}, "enabled": True}
    if parent is not None:
        body["parentUuid"] = parent
    reply = await client.post("/ota/api/device/group/save", body)
    assert reply.status == 200, reply.body
    return str(reply.data["uuid"])


async def test_create_and_read_group(server: Server, admin: Client) -> None:
    """A saved group has the seed's fields and reads back through findBy and all."""
    reply = await admin.post(
        "/ota/api/device/group/save", {"profile": {"name": "lab"}, "enabled": False}
    )
    group = reply.data
    assert set(group) >= {
        "siteUuid",
        "parentUuid",
        "deviceNumbers",
        "uuid",
        "profile",
        "created",
        "updated",
        "enabled",
    }
    assert group["profile"] == {"name": "lab"} and group["enabled"] is False
    assert group["siteUuid"] == server.sites["alpha"].uuid
    assert group["parentUuid"] is None and group["deviceNumbers"] == 0
    assert group["created"].endswith("Z")
    assert (await admin.get("/ota/api/device/group/findBy", uuid=group["uuid"])).data == group
    assert (await admin.get("/ota/api/device/group/all")).data == [group]


async def test_update_group_by_uuid(admin: Client) -> None:
    """Saving with an existing uuid updates name, enabled and parent; uuid stays."""
    parent = await make_group(admin, "parent")
    child = await make_group(admin, "child")
    reply = await admin.post(
        "/ota/api/device/group/save",
        {"uuid": child, "profile": {"name": "renamed"}, "enabled": False, "parentUuid": parent},
    )
    assert reply.data["uuid"] == child
    assert reply.data["profile"]["name"] == "renamed" and reply.data["parentUuid"] == parent
    assert len((await admin.get("/ota/api/device/group/all")).data) == 2


async def test_cycles_are_rejected(server: Server, admin: Client) -> None:
    """A group cannot move under itself or its descendant (40001); nothing changes."""
    top = await make_group(admin, "top")
    mid = await make_group(admin, "mid", top)
    low = await make_group(admin, "low", mid)
    before = server.sql("SELECT uuid, parent_uuid, updated FROM device_groups ORDER BY uuid")
    for new_parent in (top, low, mid):
        reply = await admin.post(
            "/ota/api/device/group/save",
            {"uuid": top, "profile": {"name": "top"}, "parentUuid": new_parent},
        )
        assert (reply.status, reply.code) == (400, 40001)
        assert "cycle" in reply.body["message"]
    after = server.sql("SELECT uuid, parent_uuid, updated FROM device_groups ORDER BY uuid")
    assert [tuple(r) for r in before] == [tuple(r) for r in after]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "profile: is required"),
        ({"profile": {}}, "profile.name: is required"),
        ({"profile": {"name": "  "}}, "profile.name: must not be empty"),
        ({"profile": {"name": 3}}, "profile.name: must be a string"),
        ({"profile": {"name": "x"}, "enabled": "yes"}, "enabled: must be true or false"),
        ({"profile": {"name": "x"}, "parentUuid": "nope"}, "parentUuid: no device group"),
        ({"profile": "x"}, "profile: must be an object"),
    ],
)
async def test_invalid_group_bodies(
    server: Server, admin: Client, body: dict[str, object], needle: str
) -> None:
    """Each invalid field is 40001 naming it; nothing is written."""
    reply = await admin.post("/ota/api/device/group/save", body)
    assert (reply.status, reply.code) == (400, 40001)
    assert needle in reply.body["message"]
    assert server.sql("SELECT COUNT(*) AS n FROM device_groups")[0]["n"] == 0


async def test_unknown_group_uuid(admin: Client) -> None:
    """findBy and update of an unknown uuid are 40400; findBy without uuid is 40001."""
    assert (await admin.get("/ota/api/device/group/findBy", uuid="nope")).code == 40400
    assert (await admin.get("/ota/api/device/group/findBy")).code == 40001
    reply = await admin.post(
        "/ota/api/device/group/save", {"uuid": "nope", "profile": {"name": "x"}}
    )
    assert reply.code == 40400


async def test_device_numbers_count_direct_members(admin: Client) -> None:
    """deviceNumbers counts devices directly in the group, not in its children."""
    top = await make_group(admin, "top")
    child = await make_group(admin, "child", top)
    body = [
        {"profile": {"hardware_info": {"serial_no": f"S{i}"}}, "groupUuid": top if i < 3 else child}
        for i in range(5)
    ]
    assert (await admin.post("/ota/api/device/save", body)).status == 200
    groups = {g["profile"]["name"]: g for g in (await admin.get("/ota/api/device/group/all")).data}
    assert groups["top"]["deviceNumbers"] == 3 and groups["child"]["deviceNumbers"] == 2


async def test_group_parent_of_other_site_is_unknown(admin: Client, other: Client) -> None:
    """A parent in another site is 'no such group' (its existence is not revealed)."""
    foreign = await make_group(other, "beta-group")
    reply = await admin.post(
        "/ota/api/device/group/save", {"profile": {"name": "x"}, "parentUuid": foreign}
    )
    assert reply.code == 40001
