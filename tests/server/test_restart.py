"""Durability: stopping and starting the server on the same files keeps every object."""

from __future__ import annotations

from tests.helpers import Client, Server, ota_zip
from tests.server.test_groups import make_group
from tests.server.test_otas import FULL_META


async def test_restart_keeps_all_data(server: Server, admin: Client) -> None:
    """Groups, devices, apps (and their bytes), images, profiles and tokens survive a restart."""
    group = await make_group(admin, "lab")
    await admin.post(
        "/ota/api/device/save",
        [{"profile": {"hardware_info": {"serial_no": "S1"}}, "groupUuid": group}],
    )
    app = (await admin.upload_apk("basic-v1.apk")).data
    ota = (await admin.upload("/ota/api/ota/upload", ota_zip(FULL_META), "o.zip")).data
    profile = (
        await admin.post(
            "/ota/api/profile/save",
            {
                "scope": {"group": [group]},
                "apps": {"install": [{"uuid": app["fileUuid"]}]},
                "otas": [ota["fileUuid"]],
            },
        )
    ).data
    paths = [
        "/ota/api/device/group/all",
        "/ota/api/device/find",
        "/ota/api/app/all",
        "/ota/api/ota/all",
        "/ota/api/profile/all",
    ]
    before = [(await admin.get(p)).data for p in paths]
    before_status = (await admin.get("/ota/api/profile/status", uuid=profile["uuid"])).data

    await server.restart()
    admin.base = server.base

    after = [(await admin.get(p)).data for p in paths]
    assert after == before
    assert (await admin.get("/ota/api/profile/status", uuid=profile["uuid"])).data == before_status
    async with admin.http.get(
        f"{server.base}/ota/api/file/{app['fileUuid']}", headers=admin.headers()
    ) as response:
        assert response.status == 200
        assert len(await response.read()) == app["fileInfo"]["length"]
