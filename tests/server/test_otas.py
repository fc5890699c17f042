"""§4 OTA images: metadata read from the zip, otaInfo overrides, bad packages, reads."""

from __future__ import annotations

import json

import pytest

from tests.helpers import Client, Server, ota_zip

FULL_META = {
    "ota-type": "AB",
    "pre-device": "walleye|taimen",
    "post-build": "acme/walleye/walleye:14/UP1A/200:user/release-keys",
    "post-timestamp": "1790000000",
}
PARTIAL_META = {
    **FULL_META,
    "pre-build": "acme/walleye/walleye:14/UP1A/100:user/release-keys",
    "pre-build-incremental": "100",
}


async def test_metadata_fills_ota_info(admin: Client) -> None:
    """ota-type, pre-device, post-build and post-timestamp map onto otaInfo (§4)."""
    reply = await admin.upload("/ota/api/ota/upload", ota_zip(FULL_META), "full.zip")
    assert reply.status == 200, reply.body
    info = reply.data["otaInfo"]
    assert info["abUpdate"] is True and info["deviceId"] == "walleye"
    assert info["postBuild"] == FULL_META["post-build"] and info["preBuild"] == ""
    assert info["buildDate"] == 1790000000 and info["type"] == "base"
    assert reply.data["fileInfo"]["fileName"] == "full.zip" and reply.data["enable"] is True


async def test_partial_image_has_prebuild(admin: Client) -> None:
    """An incremental package's pre-build becomes preBuild (a partial image)."""
    reply = await admin.upload("/ota/api/ota/upload", ota_zip(PARTIAL_META), "inc.zip")
    assert reply.data["otaInfo"]["preBuild"] == PARTIAL_META["pre-build"]


async def test_form_ota_info_overrides_and_fills(admin: Client) -> None:
    """The otaInfo form field fills what the zip lacks and overrides what it says."""
    extra = {
        "type": "region",
        "productId": "P1",
        "skuId": "SKU9",
        "customerId": "C1",
        "deviceId": "override",
        "sdk": 34,
        "abUpdate": False,
    }
    reply = await admin.upload(
        "/ota/api/ota/upload",
        ota_zip(FULL_META),
        "r.zip",
        otaInfo=json.dumps(extra),
        name="Region EU",
    )
    info = reply.data["otaInfo"]
    assert (info["type"], info["productId"], info["skuId"], info["customerId"]) == (
        "region",
        "P1",
        "SKU9",
        "C1",
    )
    assert info["deviceId"] == "override" and info["abUpdate"] is False and info["sdk"] == "34"
    assert reply.data["name"] == "Region EU"


async def test_ota_info_completes_missing_metadata(admin: Client) -> None:
    """A BLOCK package without pre-device is accepted when otaInfo names the device."""
    meta = {"ota-type": "BLOCK", "post-build": "acme/x/x:13/T/1:user/release-keys"}
    missing = await admin.upload("/ota/api/ota/upload", ota_zip(meta), "x.zip")
    assert missing.code == 40001 and "otaInfo.deviceId" in missing.body["message"]
    given = await admin.upload(
        "/ota/api/ota/upload", ota_zip(meta), "x.zip", otaInfo=json.dumps({"deviceId": "x"})
    )
    assert given.status == 200 and given.data["otaInfo"]["abUpdate"] is False


@pytest.mark.parametrize(
    ("content", "fields", "needle"),
    [
        (b"not a zip at all", {}, "not a zip archive"),
        (ota_zip(None), {}, "no META-INF/com/android/metadata"),
        (ota_zip(FULL_META)[:200], {}, "not a zip archive or truncated"),
        (
            ota_zip(
                {"ota-type": "AB", "post-timestamp": "soon", "pre-device": "d", "post-build": "b"}
            ),
            {},
            "post-timestamp",
        ),
        (ota_zip(FULL_META), {"otaInfo": "{bad"}, "otaInfo: is not valid JSON"),
        (ota_zip(FULL_META), {"otaInfo": "[]"}, "otaInfo: must be a JSON object"),
        (
            ota_zip(FULL_META),
            {"otaInfo": '{"deviceID": "typo"}'},
            "otaInfo.deviceID: unknown field",
        ),
        (ota_zip(FULL_META), {"otaInfo": '{"type": "delta"}'}, "otaInfo.type"),
        (ota_zip(FULL_META), {"otaInfo": '{"buildDate": "today"}'}, "otaInfo.buildDate"),
        (ota_zip(FULL_META), {"otaInfo": '{"abUpdate": "yes"}'}, "otaInfo.abUpdate"),
    ],
)
async def test_bad_packages_write_nothing(
    server: Server, admin: Client, content: bytes, fields: dict[str, str], needle: str
) -> None:
    """A corrupt zip, missing metadata or bad otaInfo is 40001 naming it; nothing is stored."""
    reply = await admin.upload("/ota/api/ota/upload", content, "bad.zip", **fields)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert needle in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM otas")[0][0] == 0
    assert server.files_on_disk() == []


async def test_identical_reupload_returns_existing(server: Server, admin: Client) -> None:
    """The same bytes twice are one image."""
    content = ota_zip(FULL_META)
    first = await admin.upload("/ota/api/ota/upload", content, "a.zip")
    second = await admin.upload("/ota/api/ota/upload", content, "a.zip")
    assert first.data == second.data
    assert server.sql("SELECT COUNT(*) FROM otas")[0][0] == 1


async def test_ota_all_and_find(admin: Client, other: Client) -> None:
    """ota/all lists with size; ota/find filters by otaInfo.type and deviceId; sites are apart."""
    await admin.upload("/ota/api/ota/upload", ota_zip(FULL_META), "base.zip")
    await admin.upload(
        "/ota/api/ota/upload",
        ota_zip(FULL_META, extra=b"r"),
        "region.zip",
        otaInfo=json.dumps({"type": "region"}),
    )
    await admin.upload(
        "/ota/api/ota/upload",
        ota_zip(PARTIAL_META),
        "inc.zip",
        otaInfo=json.dumps({"deviceId": "taimen"}),
    )
    listing = await admin.get("/ota/api/ota/all")
    assert listing.body["size"] == 3 and len(listing.data) == 3
    regions = await admin.get("/ota/api/ota/find", filter=json.dumps({"otaInfo.type": "region"}))
    assert [o["fileInfo"]["fileName"] for o in regions.data] == ["region.zip"]
    taimen = await admin.get(
        "/ota/api/ota/find", filter=json.dumps({"otaInfo.deviceId": ["taimen"]})
    )
    assert taimen.body["totalSize"] == 1
    assert (await other.get("/ota/api/ota/all")).data == []
    assert (await other.get("/ota/api/ota/find")).body["totalSize"] == 0
