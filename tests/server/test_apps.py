"""§4 apps: upload real APKs (parsed with androguard), duplicates, conflicts, bad files, reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest

from server.clock import FixedClock
from server.config import ServerConfig
from server.context import SERVICES
from tests.conftest import StartServer
from tests.helpers import APKS, Client, Server, expected_apks, seed_sites

VALID = ["basic-v1.apk", "basic-v2.apk", "maxsdk.apk", "nolabel.apk", "nosdk.apk", "v1only.apk"]


@pytest.mark.parametrize("name", VALID)
async def test_upload_matches_aapt_and_keytool(server: Server, admin: Client, name: str) -> None:
    """appInfo equals what `aapt dump badging` and `keytool -printcert` report (expected.json)."""
    want = expected_apks()[name]
    reply = await admin.upload_apk(name)
    assert reply.status == 200, reply.body
    app = reply.data
    info = app["appInfo"]
    for key in (
        "packageName",
        "versionCode",
        "versionName",
        "minSdkVersion",
        "targetSdkVersion",
        "maxSdkVersion",
        "certMd5",
    ):
        assert info[key] == want[key], key
    assert info["label"] == (want["label"] or want["packageName"])
    assert app["fileInfo"]["length"] == want["appSize"]
    assert app["fileInfo"]["sha256"] == want["sha256"]
    assert app["fileInfo"]["fileName"] == name
    assert app["name"] == name and app["enable"] is True and app["extra"] == {}
    assert app["userUuid"] and app["registeredAt"].endswith("Z")
    assert (server.config.files_dir / want["sha256"][:2] / want["sha256"]).read_bytes() == (
        APKS / name
    ).read_bytes()


async def test_upload_name_and_enable_fields(admin: Client) -> None:
    """The optional name and enable form fields are stored."""
    reply = await admin.upload_apk("basic-v1.apk", name="Basic", enable="false")
    assert reply.data["name"] == "Basic" and reply.data["enable"] is False
    bad = await admin.upload_apk("basic-v2.apk", enable="perhaps")
    assert bad.code == 40001 and "enable" in bad.body["message"]


async def test_identical_reupload_returns_existing(server: Server, admin: Client) -> None:
    """Identical bytes return the existing App (same fileUuid); nothing new is stored."""
    first = await admin.upload_apk("basic-v1.apk")
    second = await admin.upload_apk("basic-v1.apk")
    assert second.status == 200 and second.data == first.data
    assert server.sql("SELECT COUNT(*) FROM apps")[0][0] == 1
    assert server.sql("SELECT COUNT(*) FROM files")[0][0] == 1


async def test_same_version_other_bytes_is_conflict(server: Server, admin: Client) -> None:
    """Same package and versionCode with other content is 40900; nothing is written."""
    await admin.upload_apk("basic-v1.apk")
    blobs_before = server.files_on_disk()
    reply = await admin.upload_apk("basic-v1-conflict.apk")
    assert (reply.status, reply.code) == (409, 40900)
    assert "com.example.basic" in reply.body["message"] and "versionCode 1" in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM apps")[0][0] == 1
    assert server.files_on_disk() == blobs_before


async def test_new_version_is_a_new_app(admin: Client) -> None:
    """A higher versionCode of the same package is a separate App."""
    first = await admin.upload_apk("basic-v1.apk")
    second = await admin.upload_apk("basic-v2.apk")
    assert second.data["fileUuid"] != first.data["fileUuid"]
    assert (await admin.get("/ota/api/app/all")).body["size"] == 2


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("corrupt-truncated.apk", "not a zip archive or truncated"),
        ("not-a-zip.apk", "not a zip archive or truncated"),
        ("unsigned.apk", "not signed"),
    ],
)
async def test_bad_apks_are_rejected(server: Server, admin: Client, name: str, needle: str) -> None:
    """A corrupt, non-zip or unsigned APK is 40001 naming the file; no row or blob remains."""
    reply = await admin.upload_apk(name)
    assert (reply.status, reply.code) == (400, 40001)
    assert needle in reply.body["message"] and name in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM apps")[0][0] == 0
    assert server.files_on_disk() == []


async def test_zip_without_manifest_is_rejected(server: Server, admin: Client) -> None:
    """A zip that is not an APK is 40001."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    reply = await admin.upload("/ota/api/app/upload", buffer.getvalue(), "hello.apk")
    assert reply.code == 40001 and "hello.apk" in reply.body["message"]
    assert server.files_on_disk() == []


async def test_upload_shape_errors(server: Server, admin: Client) -> None:
    """Not multipart, no file part, an empty file, an unknown field: 40001, nothing stored."""
    not_multipart = await admin.post("/ota/api/app/upload", {"file": "x"})
    assert not_multipart.code == 40001 and "multipart" in not_multipart.body["message"]
    form = aiohttp.FormData()
    form.add_field("name", "x")
    no_file = await admin.call("POST", "/ota/api/app/upload", data=form)
    assert no_file.code == 40001 and "file" in no_file.body["message"]
    empty = await admin.upload("/ota/api/app/upload", b"", "empty.apk")
    assert empty.code == 40001 and "empty" in empty.body["message"]
    unknown = await admin.upload_apk("basic-v1.apk", colour="red")
    assert unknown.code == 40001 and "colour" in unknown.body["message"]
    assert server.sql("SELECT COUNT(*) FROM apps")[0][0] == 0
    assert server.files_on_disk() == []


async def test_oversize_upload_is_41300_and_leaves_nothing(
    server_factory: StartServer, http: aiohttp.ClientSession
) -> None:
    """An upload over --max-upload-bytes is 41300, stopped while streaming; no temp file stays."""
    server = await server_factory(max_upload_bytes=4096)
    site = server.sites["alpha"]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    reply = await client.upload_apk("basic-v1.apk")
    assert (reply.status, reply.code) == (413, 41300)
    assert server.sql("SELECT COUNT(*) FROM apps")[0][0] == 0
    assert server.files_on_disk() == []


async def test_app_find_filters_and_paging(admin: Client) -> None:
    """app/find pages and filters by appInfo.packageName, name and enable."""
    for name in ("basic-v1.apk", "basic-v2.apk", "maxsdk.apk"):
        await admin.upload_apk(name, enable="false" if name == "maxsdk.apk" else "true")
    by_package = await admin.get(
        "/ota/api/app/find",
        filter=json.dumps({"appInfo.packageName": "com.example.basic"}),
        sortBy="appInfo.versionCode",
        direction="desc",
    )
    assert [a["appInfo"]["versionCode"] for a in by_package.data] == [2, 1]
    assert by_package.body["totalSize"] == 2
    disabled = await admin.get("/ota/api/app/find", filter=json.dumps({"enable": False}))
    assert [a["appInfo"]["packageName"] for a in disabled.data] == ["com.example.maxsdk"]
    paged = await admin.get("/ota/api/app/find", size="2", page="1")
    assert len(paged.data) == 1 and paged.body["totalPage"] == 2
    bad = await admin.get("/ota/api/app/find", filter=json.dumps({"secret": 1}))
    assert bad.code == 40001


async def test_apps_are_per_site(admin: Client, other: Client) -> None:
    """Another site sees none of the apps; its identical upload is its own App."""
    mine = await admin.upload_apk("basic-v1.apk")
    assert (await other.get("/ota/api/app/all")).data == []
    assert (await other.get("/ota/api/app/find")).body["totalSize"] == 0
    theirs = await other.upload_apk("basic-v1.apk")
    assert theirs.status == 200 and theirs.data["fileUuid"] != mine.data["fileUuid"]


async def test_a_given_parser_pool_is_used_and_left_running(
    make_config: Callable[..., ServerConfig], clock: FixedClock, http: aiohttp.ClientSession
) -> None:
    """create_app(parser_pool=...) parses uploads there and leaves the pool to its owner (the
    test session shares one worker across servers); without one the app starts and stops its
    own."""
    pool = ThreadPoolExecutor(1)  # stands in for the worker process: same Executor seam
    try:
        server = Server(config=make_config(), clock=clock, parser_pool=pool)
        server.sites = seed_sites(server.config, clock, ["alpha"])
        await server.start()
        site = server.sites["alpha"]
        client = Client(http, server.base, site.key)
        await client.login(site.email, site.password)
        assert (await client.upload_apk("basic-v1.apk")).status == 200
        app = server.app
        await server.stop()
        assert app is not None and app[SERVICES].upload_parsers.pool is pool
        assert pool.submit(sum, [1, 2]).result() == 3  # not shut down by the app
    finally:
        pool.shutdown()


async def test_without_a_pool_the_app_runs_its_own_parser(
    make_config: Callable[..., ServerConfig], clock: FixedClock, http: aiohttp.ClientSession
) -> None:
    """As in production: the app starts its parser worker on the first upload and stops it."""
    server = Server(config=make_config(), clock=clock)
    server.sites = seed_sites(server.config, clock, ["alpha"])
    await server.start()
    site = server.sites["alpha"]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    assert (await client.upload_apk("basic-v1.apk")).status == 200
    app = server.app
    await server.stop()
    assert app is not None
    own = app[SERVICES].upload_parsers.pool
    assert own is not None
    with pytest.raises(RuntimeError, match="shutdown"):
        own.submit(sum, [1, 2])
