"""Uploads and downloads under hostile input (issue 12, items 2, 3, 7 and 8): zip bombs, a dead
or stuck parser worker, multipart names and fields, Range, orphan blobs. Every refusal is the
envelope with its code and a message naming what was wrong, and nothing was stored: the list
endpoints, the files table and the blob folder (temp area included) are read back empty."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from server.clock import FixedClock
from server.config import ServerConfig
from server.context import SERVICES
from server.errors import Unavailable
from server.services.upload_parsers import Parsed, ParserWorkers, UploadParsers
from tests.helpers import APKS, Client, Server, ota_zip, seed_sites
from tests.zipbombs import (
    MANIFEST,
    OTA_METADATA,
    OTA_TEXT,
    apk_with_version_code,
    declared_bomb,
    lying_bomb,
    many_entries,
    with_entry,
)

OTA_META = {
    "ota-type": "AB",
    "pre-device": "walleye",
    "post-build": "acme/walleye/walleye:14/UP1A/200:user/release-keys",
}
BOUNDARY = "hostile-boundary-7d3f"


async def assert_nothing_stored(server: Server, admin: Client) -> None:
    """No app, no image, no file row, no blob and no temp file."""
    assert (await admin.get("/ota/api/app/all")).data == []
    assert (await admin.get("/ota/api/ota/all")).data == []
    assert server.sql("SELECT COUNT(*) FROM files")[0][0] == 0
    assert server.files_on_disk() == []


def refused(reply_code: int, message: str, *needles: str) -> None:
    assert reply_code == 40001, message
    for needle in needles:
        assert needle in message, (needle, message)


# --- Zip bombs (item 2) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "content", "needles"),
    [
        ("declared", lambda: declared_bomb(MANIFEST, 8 << 20), [MANIFEST, "4194304"]),
        ("lying", lambda: lying_bomb(MANIFEST, 64 << 20), [MANIFEST, "100:1"]),
        (
            "arsc",
            lambda: with_entry("basic-v1.apk", "resources.arsc", bytes(4 << 20)),
            ["resources.arsc"],
        ),
        ("entries", lambda: many_entries(65_536), ["65535 entries"]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_apk_bombs_are_40001_naming_entry_and_limit(
    server: Server, admin: Client, what: str, content: Callable[[], bytes], needles: list[str]
) -> None:
    """An APK whose manifest (declared, or lying about its size), resources.arsc or entry count
    is over the upload limits is 40001 naming the entry and the limit; nothing is stored."""
    reply = await admin.upload("/ota/api/app/upload", content(), f"{what}.apk")
    assert reply.status == 400, reply.body
    refused(reply.code, reply.body["message"], f"{what}.apk", *needles)
    await assert_nothing_stored(server, admin)


@pytest.mark.parametrize(
    ("what", "content", "needles"),
    [
        ("declared", lambda: declared_bomb(OTA_METADATA, 2 << 20), [OTA_METADATA, "1048576"]),
        (
            "lying",
            lambda: lying_bomb(OTA_METADATA, 64 << 20, prefix=OTA_TEXT),
            [OTA_METADATA, "limit"],
        ),
        ("entries", lambda: many_entries(65_536, {OTA_METADATA: OTA_TEXT}), ["65535 entries"]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_ota_bombs_are_40001_naming_entry_and_limit(
    server: Server, admin: Client, what: str, content: Callable[[], bytes], needles: list[str]
) -> None:
    """An OTA zip whose metadata declares too much, or lies about its size and inflates past
    the limit, or that has too many entries, is 40001 naming it; nothing is stored."""
    reply = await admin.upload("/ota/api/ota/upload", content(), f"{what}.zip")
    assert reply.status == 400, reply.body
    refused(reply.code, reply.body["message"], f"{what}.zip", *needles)
    await assert_nothing_stored(server, admin)


@pytest.mark.parametrize("raw", ["9223372036854775808", "١٢٣"])
async def test_string_version_code_out_of_range_is_40001(
    server: Server, admin: Client, raw: str
) -> None:
    """A string versionCode of 2^63 (was 500: OverflowError in SQLite) or in Arabic-Indic
    digits is 40001 naming versionCode; nothing is stored."""
    reply = await admin.upload("/ota/api/app/upload", apk_with_version_code(raw), "vc.apk")
    assert reply.status == 400, reply.body
    refused(reply.code, reply.body["message"], "versionCode")
    await assert_nothing_stored(server, admin)


# --- The parser worker (item 3) --------------------------------------------------------------


def slow_apk_worker(path: str) -> Parsed:
    """Stands in for a parse that never ends (a hostile file the limits do not catch)."""
    time.sleep(600)
    return None, "unreachable"


def wait_gone(pid: int, timeout_s: float = 60.0) -> bool:
    """True once process `pid` has exited (a pidfd becomes readable), False after timeout_s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


async def own_parser_server(
    make_config: Callable[..., ServerConfig], clock: FixedClock, http: aiohttp.ClientSession
) -> tuple[Server, Client, UploadParsers]:
    """A server with its own parser worker (not the test session's shared one)."""
    server = Server(config=make_config(), clock=clock)
    server.sites = seed_sites(server.config, clock, ["alpha"])
    await server.start()
    site = server.sites["alpha"]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    assert server.app is not None
    return server, client, server.app[SERVICES].upload_parsers


async def test_a_killed_worker_is_replaced_and_the_next_upload_succeeds(
    make_config: Callable[..., ServerConfig], clock: FixedClock, http: aiohttp.ClientSession
) -> None:
    """The worker killed as the OOM killer would: the next upload gets a new worker (the pool
    was broken: it is replaced and the parse retried once), then uploads go on."""
    server, client, parsers = await own_parser_server(make_config, clock, http)
    try:
        assert (await client.upload_apk("basic-v1.apk")).status == 200
        first = parsers.worker_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_gone(first)
        reply = await client.upload_apk("basic-v2.apk")
        assert reply.status == 200, reply.body
        assert parsers.worker_pid not in (None, first)
        assert (await client.upload_apk("maxsdk.apk")).status == 200
    finally:
        await server.stop()
    assert parsers.worker_pid is not None and wait_gone(parsers.worker_pid)


async def test_a_parse_over_the_time_bound_is_stopped_with_a_clear_error(
    make_config: Callable[..., ServerConfig], clock: FixedClock, http: aiohttp.ClientSession
) -> None:
    """A parse longer than the bound (1 s here) kills its worker and answers 40001 naming the
    limit; nothing is stored; the next upload gets a new worker and succeeds."""
    server, client, parsers = await own_parser_server(make_config, clock, http)
    try:
        assert (await client.upload_apk("basic-v1.apk")).status == 200
        stuck = parsers.worker_pid
        assert stuck is not None
        parsers.workers, parsers.timeout_s = ParserWorkers(apk=slow_apk_worker), 1.0
        reply = await client.upload_apk("basic-v2.apk")
        assert reply.status == 400, reply.body
        refused(reply.code, reply.body["message"], "basic-v2.apk", "longer than the limit of 1 s")
        assert wait_gone(stuck)
        apps = (await client.get("/ota/api/app/all")).data
        assert [a["fileInfo"]["fileName"] for a in apps] == ["basic-v1.apk"]
        assert not list((server.config.files_dir / "tmp").iterdir())
        parsers.workers = ParserWorkers()
        assert (await client.upload_apk("basic-v2.apk")).status == 200
    finally:
        await server.stop()


async def test_stopping_the_server_stops_its_worker(
    make_config: Callable[..., ServerConfig], clock: FixedClock, http: aiohttp.ClientSession
) -> None:
    """A clean stop leaves no worker behind."""
    server, client, parsers = await own_parser_server(make_config, clock, http)
    assert (await client.upload_apk("basic-v1.apk")).status == 200
    pid = parsers.worker_pid
    await server.stop()
    assert pid is not None and wait_gone(pid, 30)


async def test_a_cancelled_parse_does_not_run_on() -> None:
    """A parse whose caller is cancelled (a server stopping) has its worker killed at once: it
    would otherwise hold the only worker, and the next parse's time bound, for nothing."""
    parsers = UploadParsers()
    pid = await parsers.start()
    assert pid is not None
    parsers.workers = ParserWorkers(apk=slow_apk_worker)
    task = asyncio.create_task(parsers.apk(Path("stuck.apk")))
    await asyncio.sleep(0)  # one step: the task takes the lock and submits the parse
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wait_gone(pid)
    parsers.close()


async def test_close_during_a_parse_kills_the_worker_and_starts_no_other() -> None:
    """close() while a parse runs kills the worker (no wait for the parse) and the parse
    answers 503 instead of starting a worker that would outlive the app."""
    parsers = UploadParsers()
    pid = await parsers.start()
    assert pid is not None
    parsers.workers = ParserWorkers(apk=slow_apk_worker)
    task = asyncio.create_task(parsers.apk(Path("stuck.apk")))
    await asyncio.sleep(0)  # one step: the task takes the lock and submits the parse
    parsers.close()
    with pytest.raises(Unavailable, match="stopping"):
        await task
    assert wait_gone(pid) and parsers.worker_pid in (None, pid)  # no other worker started


WORKER_OWNER = """
import asyncio
from server.services.upload_parsers import UploadParsers

async def main():
    parsers = UploadParsers()
    print("worker", await parsers.start(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_the_worker_exits_when_the_server_is_killed() -> None:
    """kill -9 of the server process: its worker notices (its watchdog) and exits."""
    with subprocess.Popen(
        [sys.executable, "-c", WORKER_OWNER],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    ) as owner:
        assert owner.stdout is not None
        line = b""
        while not line.startswith(b"worker "):  # the log lines go first
            line = owner.stdout.readline()
            assert line, "the owner exited before its worker started"
        worker = int(line.split()[1])
        assert worker != owner.pid and not wait_gone(worker, 0)
        owner.kill()
        owner.wait(30)
        assert wait_gone(worker, 60), "the parser worker outlived its server"


# --- Multipart names and fields (item 7) -----------------------------------------------------


def multipart(parts: list[tuple[str, bytes]]) -> bytes:
    """A multipart/form-data body; each part is (Content-Disposition parameters, payload)."""
    body = b""
    for params, payload in parts:
        body += f"--{BOUNDARY}\r\nContent-Disposition: form-data; {params}\r\n\r\n".encode()
        body += payload + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


async def post_multipart(client: Client, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    reply = await client.call(
        "POST",
        path,
        raw=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    return reply.status, reply.body


async def download(client: Client, file_uuid: str, **headers: str) -> aiohttp.ClientResponse:
    async with client.http.get(
        f"{client.base}/ota/api/file/{file_uuid}", headers=client.headers(headers)
    ) as response:
        await response.read()
        return response


PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^;\s"]*)')


def disposition_params(header: str) -> dict[str, str]:
    """The header's parameters as RFC 6266's grammar splits them (quoted strings kept whole:
    a `;` or `=` inside a quoted name is not a parameter), filename* percent-decoded."""
    kind, _, rest = header.partition(";")
    assert kind == "attachment", header
    found = PARAM.findall(";" + rest)
    assert PARAM.sub("", ";" + rest) == "", header  # nothing the grammar does not cover
    params = dict(found)
    assert list(params) == ["filename", "filename*"], header
    params["filename"] = params["filename"][1:-1]
    charset, _, encoded = params["filename*"].partition("''")
    assert charset == "UTF-8"
    return {"filename": params["filename"], "filename*": urllib.parse.unquote(encoded)}


@pytest.mark.parametrize(
    ("params", "stored"),
    [
        ("name=\"file\"; filename*=UTF-8''a%0D%0Ab.zip", "ab.zip"),
        ("name=\"file\"; filename*=UTF-8''nul%00%7F%C2%85.zip", "nul.zip"),
        ("name=\"file\"; filename*=UTF-8''rtl%E2%80%AEpiz.apk", "rtlpiz.apk"),
        ('name="file"; filename="../../etc/passwd"', "passwd"),
        ('name="file"; filename="C:\\\\Users\\\\x\\\\full.zip"', "full.zip"),
        ("name=\"file\"; filename*=UTF-8''..", "upload"),
        ('name="file"', "upload"),
    ],
)
async def test_stored_file_names_are_sanitised(
    admin: Client, server: Server, params: str, stored: str
) -> None:
    """Control characters (CR, LF, NUL, C1, bidi overrides) and path parts are removed from
    the multipart filename; an empty result is "upload". The download answers 200 (a CR/LF in
    the name made it 500 forever)."""
    body = multipart([(params, ota_zip(OTA_META))])
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert status == 200, reply
    data = reply["data"]
    assert isinstance(data, dict)
    assert data["fileInfo"]["fileName"] == stored
    response = await download(admin, data["fileUuid"])
    assert response.status == 200
    assert disposition_params(response.headers["Content-Disposition"])["filename*"] == stored


async def test_content_disposition_cannot_be_injected(admin: Client) -> None:
    """A `"` (or `;`) in the name stays inside the filename parameters (RFC 6266: an ASCII
    fallback with quotes replaced, and filename* percent-encoded); a non-ASCII name travels
    whole in filename*."""
    hostile = 'x"; filename="evil.sh'
    quoted = urllib.parse.quote(hostile, safe="")
    body = multipart([(f"name=\"file\"; filename*=UTF-8''{quoted}", ota_zip(OTA_META))])
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert status == 200, reply
    data = reply["data"]
    assert isinstance(data, dict) and data["fileInfo"]["fileName"] == hostile
    header = (await download(admin, data["fileUuid"])).headers["Content-Disposition"]
    assert header == (
        'attachment; filename="x_; filename=_evil.sh"; '
        "filename*=UTF-8''x%22%3B%20filename%3D%22evil.sh"
    )
    assert disposition_params(header) == {
        "filename": "x_; filename=_evil.sh",
        "filename*": hostile,
    }

    body = multipart(
        [("name=\"file\"; filename*=UTF-8''%E6%9B%B4%E6%96%B0.zip", b"x" + ota_zip(OTA_META))]
    )
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert status == 200, reply
    data = reply["data"]
    assert isinstance(data, dict)
    header = (await download(admin, data["fileUuid"])).headers["Content-Disposition"]
    assert header == "attachment; filename=\"__.zip\"; filename*=UTF-8''%E6%9B%B4%E6%96%B0.zip"


async def test_a_long_file_name_is_cut_keeping_its_extension(admin: Client) -> None:
    body = multipart([(f'name="file"; filename="{"n" * 1000}.zip"', ota_zip(OTA_META))])
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert status == 200, reply
    data = reply["data"]
    assert isinstance(data, dict)
    name = data["fileInfo"]["fileName"]
    assert len(name) == 255 and name.endswith("n.zip")


async def test_a_name_field_with_control_characters_is_40001(admin: Client, server: Server) -> None:
    """The `name` field (shown in lists) must be text: a CR/LF in it is refused, naming it."""
    body = multipart(
        [('name="file"; filename="a.zip"', ota_zip(OTA_META)), ('name="name"', b"a\r\nb")]
    )
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert (status, reply["code"]) == (400, 40001)
    assert str(reply["message"]).startswith("name:")
    await assert_nothing_stored(server, admin)


@pytest.mark.parametrize(
    ("parts", "needle"),
    [
        ([('name="name"', b"n" * (64 * 1024 + 1))], "name: longer than 65536 bytes"),
        ([('name="otaInfo"', b" " * (64 * 1024 + 1))], "otaInfo: longer than 65536 bytes"),
        ([('name="name"', b"a"), ('name="name"', b"b")], "name: given twice"),
        ([('name="name"', b"\xff")], "name: is not UTF-8 text"),
    ],
    ids=["long-name", "long-otaInfo", "twice", "not-utf8"],
)
async def test_bad_fields_are_40001_naming_them(
    admin: Client, server: Server, parts: list[tuple[str, bytes]], needle: str
) -> None:
    body = multipart([('name="file"; filename="a.zip"', ota_zip(OTA_META)), *parts])
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert (status, reply["code"]) == (400, 40001), reply
    assert needle in str(reply["message"])
    await assert_nothing_stored(server, admin)


@pytest.mark.parametrize(
    ("info", "needle"),
    [
        (b'{"buildDate": NaN}', "otaInfo"),
        (b'{"w": "\\ud800"}', "otaInfo.w"),
        (b"[" * 40 + b"]" * 40, "otaInfo"),
        (b'{"buildDate": 9223372036854775808}', "otaInfo.buildDate"),
    ],
    ids=["nan", "lone-surrogate", "deep", "past-64-bits"],
)
async def test_ota_info_values_that_cannot_be_kept_are_40001(
    admin: Client, server: Server, info: bytes, needle: str
) -> None:
    """The otaInfo form field is JSON held to the same rules as a JSON body."""
    body = multipart(
        [('name="file"; filename="a.zip"', ota_zip(OTA_META)), ('name="otaInfo"', info)]
    )
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert (status, reply["code"]) == (400, 40001), reply
    assert str(reply["message"]).startswith(needle), reply
    await assert_nothing_stored(server, admin)


async def test_too_many_part_headers_is_40001_not_500(admin: Client, server: Server) -> None:
    """aiohttp's own refusal of a part with too many headers is our 40001 envelope."""
    headers = "".join(f"X-H{i}: v\r\n" for i in range(200))
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
            f"{headers}\r\n"
        ).encode()
        + ota_zip(OTA_META)
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    status, reply = await post_multipart(admin, "/ota/api/ota/upload", body)
    assert (status, reply["code"]) == (400, 40001), reply
    assert "multipart" in str(reply["message"])
    await assert_nothing_stored(server, admin)


async def send_in_pieces(
    server: Server, client: Client, path: str, body: bytes, piece: int
) -> tuple[int, dict[str, object]]:
    """POST `body` over a raw socket, `piece` bytes a write, yielding to the server between
    writes so that it reads each piece as it comes (one read_chunk() no longer sees it all)."""
    host, port = "127.0.0.1", int(server.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {client.key}\r\n"
        f"Authorization: Bearer {client.token}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    for at in range(0, len(body), piece):
        writer.write(body[at : at + piece])
        await writer.drain()
        for _ in range(5):
            await asyncio.sleep(0)  # a yield to the server's reads, not a wait on the clock
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(raw.split(b" ", 2)[1])
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def test_fields_split_across_tcp_writes_are_read_whole(server: Server, admin: Client) -> None:
    """A 172-character name and an otaInfo JSON arriving 7 bytes a write are stored whole
    (one read_chunk() stored 66 characters, and a cut otaInfo was a spurious 40001)."""
    name = "Region EU " + "r" * 162
    info = json.dumps({"type": "region", "productId": "P1", "customer": "c" * 120})
    body = multipart(
        [
            ('name="name"', name.encode()),
            ('name="otaInfo"', info.encode()),
            ('name="file"; filename="split.zip"', ota_zip(OTA_META)),
        ]
    )
    status, reply = await send_in_pieces(server, admin, "/ota/api/ota/upload", body, 7)
    assert status == 200, reply
    data = reply["data"]
    assert isinstance(data, dict)
    assert data["name"] == name and len(data["name"]) == 172
    assert data["otaInfo"]["type"] == "region" and data["otaInfo"]["customer"] == "c" * 120


# --- Range (item 8) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "status", "span"),
    [
        ("bytes=0-" + "9" * 5000, 206, "whole"),
        ("bytes=-" + "9" * 5000, 206, "whole"),
        ("bytes=" + "9" * 5000 + "-", 416, None),
        ("bytes=" + "9" * 4000 + "-" + "9" * 4000, 416, None),  # within one header's limit
        ("bytes=٠-٩", 200, None),
        ("bytes=0-٩", 200, None),
        ("bytes=１-２", 200, None),
    ],
    ids=[
        "last-huge",
        "suffix-huge",
        "first-huge",
        "both-huge",
        "arabic",
        "arabic-last",
        "fullwidth",
    ],
)
async def test_range_numbers_are_ascii_and_any_length(
    admin: Client, header: str, status: int, span: str | None
) -> None:
    """Range positions of 5,000 digits (int() raised: 500) mean "past any file"; non-ASCII
    digits make the header malformed, so it is ignored (200 with the whole file)."""
    reply = await admin.upload_apk("basic-v1.apk")
    size = (APKS / "basic-v1.apk").stat().st_size
    response = await download(admin, reply.data["fileUuid"], Range=header)
    assert response.status == status
    if span == "whole":
        assert response.headers["Content-Range"] == f"bytes 0-{size - 1}/{size}"
    if status == 416:
        assert response.headers["Content-Range"] == f"bytes */{size}"


# --- Orphan blobs (item 8) -------------------------------------------------------------------


async def test_orphan_blobs_and_temp_files_are_removed_at_start(
    server: Server, admin: Client
) -> None:
    """A blob no file row references (the server was killed between moving it into place and
    committing its row) and a temp file of a cut upload are removed when the app starts; the
    referenced blob, and files that are not blobs, stay."""
    reply = await admin.upload_apk("basic-v1.apk")
    kept = server.config.files_dir / reply.data["fileInfo"]["sha256"][:2]
    kept = kept / reply.data["fileInfo"]["sha256"]
    orphan_sha = "ab" + "0" * 62
    orphan = server.config.files_dir / "ab" / orphan_sha
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"half an upload")
    temp = server.config.files_dir / "tmp" / "0f9a.part"
    temp.write_bytes(b"cut")
    stray = server.config.files_dir / "tmp" / "upload-123"
    stray.write_bytes(b"stray temp")
    note = server.config.files_dir / "README.txt"
    note.write_text("not a blob")
    await server.restart()
    assert server.files_on_disk() == sorted([kept, note])
    again = Client(admin.http, server.base, admin.key, admin.token)
    response = await download(again, reply.data["fileUuid"])
    assert response.status == 200
