"""§2 site isolation, endpoint by endpoint: a second site's credentials see nothing of the first.

Objects of another site answer 40400 (their existence is not revealed); lists are empty; naming
the other site with siteUuid/siteId is 40300.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import NOW_MS, Client, Server, ota_zip
from tests.server.test_groups import make_group
from tests.server.test_otas import FULL_META


@pytest.fixture
async def alpha_objects(server: Server, admin: Client) -> dict[str, Any]:
    group = await make_group(admin, "lab")
    await admin.post(
        "/ota/api/device/save",
        [{"profile": {"hardware_info": {"serial_no": "A1"}}, "groupUuid": group}],
    )
    device = (await admin.get("/ota/api/device/findBy", serialNo="A1")).data["uuid"]
    server.sql("UPDATE devices SET last_checked_in = ? WHERE uuid = ?", NOW_MS, device)
    app = (await admin.upload_apk("basic-v1.apk")).data["fileUuid"]
    ota = (await admin.upload("/ota/api/ota/upload", ota_zip(FULL_META), "o.zip")).data["fileUuid"]
    profile = (await admin.post("/ota/api/profile/save", {"scope": {"group": [group]}})).data[
        "uuid"
    ]
    server.sql(
        "INSERT INTO events VALUES ('e1', ?, ?, ?, ?, ?, 'profile', '', 'applied', '', '{}')",
        server.sites["alpha"].uuid,
        device,
        profile,
        NOW_MS,
        NOW_MS,
    )
    return {"group": group, "device": device, "app": app, "ota": ota, "profile": profile}


NOT_FOUND = [
    ("/ota/api/device/group/findBy", {"uuid": "{group}"}),
    ("/ota/api/device/findBy", {"uuid": "{device}"}),
    ("/ota/api/device/findBy", {"serialNo": "A1"}),
    ("/ota/api/device/app/installed", {"deviceUuid": "{device}"}),
    ("/ota/api/device/app/status", {"deviceUuid": "{device}", "packageName": "com.example.basic"}),
    ("/ota/api/file/{app}", {}),
    ("/ota/api/file/{ota}", {}),
    ("/ota/api/profile/findBy", {"uuid": "{profile}"}),
    ("/ota/api/profile/status", {"uuid": "{profile}"}),
]
EMPTY_LISTS = [
    "/ota/api/device/group/all",
    "/ota/api/device/find",
    "/ota/api/app/all",
    "/ota/api/app/find",
    "/ota/api/ota/all",
    "/ota/api/ota/find",
    "/ota/api/profile/all",
    "/ota/api/profile/find",
    "/ota/api/logs/find",
]


@pytest.mark.parametrize(("path", "params"), NOT_FOUND)
async def test_foreign_objects_are_not_found(
    other: Client, alpha_objects: dict[str, Any], path: str, params: dict[str, str]
) -> None:
    """Reading another site's object is 40400."""
    reply = await other.get(
        path.format(**alpha_objects), **{k: v.format(**alpha_objects) for k, v in params.items()}
    )
    assert (reply.status, reply.code) == (404, 40400), reply.body


@pytest.mark.parametrize("path", EMPTY_LISTS)
async def test_foreign_lists_are_empty(
    other: Client, alpha_objects: dict[str, Any], path: str
) -> None:
    """Every list endpoint shows the other site nothing."""
    reply = await other.get(path)
    assert reply.status == 200 and reply.data == []
    assert reply.body.get("totalSize", reply.body.get("size", 0)) == 0


async def test_foreign_writes_are_refused(
    server: Server, admin: Client, other: Client, alpha_objects: dict[str, Any]
) -> None:
    """Updating, referencing or editing another site's objects fails and changes nothing there."""
    before = (await admin.get("/ota/api/device/findBy", serialNo="A1")).data
    group_update = await other.post(
        "/ota/api/device/group/save", {"uuid": alpha_objects["group"], "profile": {"name": "x"}}
    )
    assert group_update.code == 40400
    for body in (
        {"apps": {"install": [{"uuid": alpha_objects["app"]}]}},
        {"otas": [alpha_objects["ota"]]},
        {"scope": {"group": [alpha_objects["group"]]}},
    ):
        assert (await other.post("/ota/api/profile/save", body)).code == 40001
    loaded = (await admin.get("/ota/api/profile/findBy", uuid=alpha_objects["profile"])).data
    assert (
        await other.post("/ota/api/profile/edit", loaded, uuid=alpha_objects["profile"])
    ).code == 40400
    assert (await other.get("/ota/api/device/exists", serialNo="A1")).data is False
    await other.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "A1"}}}])
    assert (await admin.get("/ota/api/device/findBy", serialNo="A1")).data == before
    log = await other.get(
        "/ota/api/logs/find", filter=json.dumps({"forWhat": alpha_objects["device"]})
    )
    assert log.body["totalSize"] == 0


@pytest.mark.parametrize("path", [*EMPTY_LISTS, "/portal/V1/auth/token-verify"])
async def test_naming_the_other_site_is_forbidden(
    server: Server, other: Client, alpha_objects: dict[str, Any], path: str
) -> None:
    """siteUuid or siteId of another site is 40300 on every endpoint."""
    alpha = server.sites["alpha"]
    assert (await other.get(path, siteUuid=alpha.uuid)).code == 40300
    assert (await other.get(path, siteId=alpha.name)).code == 40300


ADMIN_ENDPOINTS = [
    ("GET", "/portal/V1/auth/token-verify"),
    ("GET", "/portal/V1/logout"),
    ("POST", "/ota/api/device/group/save"),
    ("GET", "/ota/api/device/group/all"),
    ("GET", "/ota/api/device/group/findBy"),
    ("GET", "/ota/api/device/exists"),
    ("POST", "/ota/api/device/save"),
    ("GET", "/ota/api/device/findBy"),
    ("GET", "/ota/api/device/find"),
    ("GET", "/ota/api/device/app/installed"),
    ("GET", "/ota/api/device/app/status"),
    ("GET", "/ota/api/logs/find"),
    ("POST", "/ota/api/app/upload"),
    ("GET", "/ota/api/app/all"),
    ("GET", "/ota/api/app/find"),
    ("POST", "/ota/api/ota/upload"),
    ("GET", "/ota/api/ota/all"),
    ("GET", "/ota/api/ota/find"),
    ("GET", "/ota/api/file/x"),
    ("POST", "/ota/api/profile/save"),
    ("GET", "/ota/api/profile/all"),
    ("GET", "/ota/api/profile/find"),
    ("GET", "/ota/api/profile/findBy"),
    ("POST", "/ota/api/profile/edit"),
    ("GET", "/ota/api/profile/status"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ENDPOINTS)
async def test_every_endpoint_needs_credentials(
    server: Server, admin: Client, method: str, path: str
) -> None:
    """Without a key, with an unknown key, or without a token, every endpoint is 40100."""
    for key, token in ((None, admin.token), ("not-a-key", admin.token), (admin.key, None)):
        client = Client(admin.http, server.base, key, token)
        reply = await client.call(method, path, json_body={})
        assert (reply.status, reply.code) == (401, 40100), (key, token, reply.body)
