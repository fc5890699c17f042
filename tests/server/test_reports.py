"""§3 reads of what devices reported: installed apps, app status and the event log.

Devices report through the device API (issue 3); here the rows are arranged with SQL so the
admin read side is proven on its own.
"""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import NOW_MS, Client, Server

APP = {
    "packageName": "com.example.basic",
    "label": "Basic App",
    "versionCode": 2,
    "versionName": "2.0",
    "minSdkVersion": "21",
    "targetSdkVersion": "30",
    "maxSdkVersion": "",
    "certMd5": "ac62580a4cad17f9e9531c11eceb28d5",
    "appSize": 8536,
    "dataSize": 0,
    "firstInstalled": NOW_MS,
    "lastUpdated": NOW_MS,
}


async def device_uuid(admin: Client, serial: str) -> str:
    await admin.post(
        "/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": serial}}}]
    )
    return str((await admin.get("/ota/api/device/findBy", serialNo=serial)).data["uuid"])


async def test_installed_apps_before_and_after_a_report(server: Server, admin: Client) -> None:
    """Without a report the inventory is empty; after one it lists the apps (by uuid or serial)."""
    uuid = await device_uuid(admin, "D1")
    empty = (await admin.get("/ota/api/device/app/installed", deviceUuid=uuid)).data
    assert empty == {
        "deviceUuid": uuid,
        "serialNo": "D1",
        "category": "all",
        "apps": [],
        "reported": None,
    }
    server.sql(
        "INSERT INTO app_inventory VALUES (?, 'user', ?, ?)", uuid, json.dumps([APP]), NOW_MS
    )
    reported = (await admin.get("/ota/api/device/app/installed", serialNo="D1")).data
    assert reported["apps"] == [APP] and reported["category"] == "user"
    assert reported["reported"] == "2026-09-21T14:13:20.000Z"


async def test_app_status(server: Server, admin: Client) -> None:
    """AppStatus comes from install events, else from the inventory, else installed false."""
    uuid = await device_uuid(admin, "D1")

    async def status(package: str) -> dict[str, Any]:
        reply = await admin.get("/ota/api/device/app/status", deviceUuid=uuid, packageName=package)
        assert reply.status == 200, reply.body
        data: dict[str, Any] = reply.data
        return data

    assert await status("com.example.basic") == {
        "deviceUuid": uuid,
        "serialNo": "D1",
        "packageName": "com.example.basic",
        "versionCode": None,
        "installed": False,
    }
    server.sql(
        "INSERT INTO app_inventory VALUES (?, 'user', ?, ?)", uuid, json.dumps([APP]), NOW_MS
    )
    assert (await status("com.example.basic"))["versionCode"] == 2
    server.sql("INSERT INTO app_status VALUES (?, 'com.example.basic', 3, 0, ?)", uuid, NOW_MS)
    assert (await status("com.example.basic"))["installed"] is False
    missing = await admin.get("/ota/api/device/app/status", deviceUuid=uuid)
    assert missing.code == 40001 and "packageName" in missing.body["message"]


async def test_reads_of_unknown_or_foreign_devices(admin: Client, other: Client) -> None:
    """An unknown or foreign device is 40400; no device named is 40001."""
    uuid = await device_uuid(admin, "D1")
    assert (await other.get("/ota/api/device/app/installed", deviceUuid=uuid)).code == 40400
    assert (
        await other.get("/ota/api/device/app/status", deviceUuid=uuid, packageName="x")
    ).code == 40400
    assert (await admin.get("/ota/api/device/app/installed", serialNo="nope")).code == 40400
    assert (await admin.get("/ota/api/device/app/installed")).code == 40001


async def test_logs_for_device_and_profile(server: Server, admin: Client, other: Client) -> None:
    """logs/find with forWhat lists that device's or that profile's events, paged, oldest first."""
    uuid = await device_uuid(admin, "D1")
    site = server.sites["alpha"].uuid
    for i in range(5):
        doc = json.dumps({"versionCode": i})
        server.sql(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, 'app', 'com.x', 'installed', '', ?)",
            f"e{i}",
            site,
            uuid,
            "p1" if i % 2 else None,
            NOW_MS + i,
            NOW_MS + i,
            doc,
        )
    by_device = await admin.get(
        "/ota/api/logs/find", filter=json.dumps({"forWhat": uuid}), size="2"
    )
    assert by_device.body["totalSize"] == 5 and by_device.body["totalPage"] == 3
    assert [e["id"] for e in by_device.data] == ["e0", "e1"]
    assert by_device.data[0]["versionCode"] == 0 and by_device.data[0]["status"] == "installed"
    by_profile = await admin.get(
        "/ota/api/logs/find", filter=json.dumps({"forWhat": "p1"}), direction="desc"
    )
    assert [e["id"] for e in by_profile.data] == ["e3", "e1"]
    assert (await other.get("/ota/api/logs/find", filter=json.dumps({"forWhat": uuid}))).body[
        "totalSize"
    ] == 0
    bad = await admin.get("/ota/api/logs/find", filter=json.dumps({"forWhat": [uuid, "p1"]}))
    assert bad.code == 40001 and "forWhat" in bad.body["message"]
