"""The envelope and error table of §1 hold everywhere: unknown paths, methods, bad bodies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from server.app import create_app
from server.clock import FixedClock
from server.config import ServerConfig
from tests.conftest import StartServer
from tests.helpers import Client, Server


async def test_success_envelope_has_every_key(admin: Client) -> None:
    """A success carries uq (a uuid4), doc_version, result true, code 0, message, build, data."""
    reply = await admin.get("/ota/api/device/group/all")
    assert reply.status == 200
    assert reply.body["result"] is True and reply.code == 0
    assert reply.body["doc_version"] == "latest"
    assert uuid.UUID(reply.body["uq"]).version == 4
    assert reply.body["build"].startswith("midm-fleet-server")
    assert reply.data == []


async def test_each_response_has_its_own_uq(admin: Client) -> None:
    """uq identifies one response."""
    first = await admin.get("/ota/api/device/group/all")
    second = await admin.get("/ota/api/device/group/all")
    assert first.body["uq"] != second.body["uq"]


async def test_unknown_path_is_40400_envelope(admin: Client) -> None:
    """An unknown path answers the envelope with 40400, even without credentials."""
    reply = await admin.get("/ota/api/no/such/thing")
    assert (reply.status, reply.code, reply.body["result"]) == (404, 40400, False)
    assert "/ota/api/no/such/thing" in reply.body["message"]
    assert "data" not in reply.body


async def test_wrong_method_is_405_envelope(admin: Client) -> None:
    """A known path with another method answers 405 with code 40500 and an Allow header."""
    reply = await admin.call("DELETE", "/ota/api/device/group/all")
    assert (reply.status, reply.code) == (405, 40500)
    assert "GET" in reply.headers.get("Allow", "")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
    ],
)
async def test_bad_json_bodies_are_40000(admin: Client, raw: bytes, needle: str) -> None:
    """A body that is not JSON, or not the JSON type expected, is 40000; nothing is saved."""
    reply = await admin.call("POST", "/ota/api/device/group/save", raw=raw)
    assert (reply.status, reply.code) == (400, 40000)
    assert needle in reply.body["message"]
    assert (await admin.get("/ota/api/device/group/all")).data == []


async def test_oversize_json_body_is_41300(
    server_factory: StartServer, http: aiohttp.ClientSession
) -> None:
    """A JSON body over --max-json-bytes is 41300 and nothing is saved."""
    server = await server_factory(max_json_bytes=2048)
    site = server.sites["alpha"]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    big = [{"profile": {"hardware_info": {"serial_no": f"S{i:06d}"}}} for i in range(200)]
    reply = await client.post("/ota/api/device/save", big)
    assert (reply.status, reply.code) == (413, 41300)
    assert "limit" in reply.body["message"]
    assert server.sql("SELECT COUNT(*) AS n FROM devices")[0]["n"] == 0


async def test_crash_is_50000_without_stack_trace(
    server_factory: StartServer, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception answers 50000 with a uq and no traceback in the response."""

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    server = await server_factory(customize=lambda app: app.router.add_get("/ota/api/boom", boom))
    reply = await Client(http, server.base, None).get("/ota/api/boom")
    assert (reply.status, reply.code) == (500, 50000)
    assert "secret internal detail" not in reply.body["message"]
    assert "Traceback" not in reply.body["message"]
    assert reply.body["uq"]


async def test_http_error_status_and_code_agree(server: Server, admin: Client) -> None:
    """Every error code starts with its HTTP status (the table of §1)."""
    replies = [
        await admin.get("/ota/api/device/findBy", uuid="missing"),
        await admin.get("/ota/api/device/exists"),
        await Client(admin.http, server.base, "wrong-key", admin.token).get(
            "/ota/api/device/group/all"
        ),
    ]
    for reply in replies:
        assert reply.code // 100 == reply.status


REFUSED_LOGIN = (
    b"POST /portal/V1/auth HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000000\r\n\r\n{"
)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str]]:
    status = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers["content-length"]))
    return status, headers


@asynccontextmanager
async def patient_server(config: ServerConfig, clock: FixedClock) -> AsyncIterator[web.AppRunner]:
    """The app under a runner that would wait an hour for an unread body or at shutdown, so a
    shutdown that depends on either shows as a hang, whatever the machine's speed."""
    runner = web.AppRunner(
        create_app(config, clock=clock), access_log=None, lingering_time=3600, shutdown_timeout=3600
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner


@pytest.mark.parametrize("client_leaves", [True, False])
async def test_refused_body_never_holds_up_shutdown(
    make_config: Callable[..., ServerConfig], clock: FixedClock, client_leaves: bool
) -> None:
    """A body refused before it is read (here 413 on a declared 100 MB) is answered at once with
    `Connection: close`; the server then stops without waiting for the rest of the body, whether
    the client went away or stays connected and silent."""
    async with patient_server(make_config(), clock) as runner:
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REFUSED_LOGIN)
        async with asyncio.timeout(30):
            status, headers = await _read_response(reader)
        assert status.startswith(b"HTTP/1.1 413 ")
        if client_leaves:
            writer.close()
            await writer.wait_closed()
        async with asyncio.timeout(30):  # never reached in 30 s unless the server lets go
            await runner.cleanup()
        assert headers.get("connection", "").lower() == "close"
        if not client_leaves:
            assert await reader.read() == b""  # the server closed the connection
            writer.close()


async def test_a_body_read_in_full_keeps_the_connection(admin: Client) -> None:
    """Requests whose bodies the server reads keep their connection alive."""
    saved = await admin.post("/ota/api/device/group/save", {"profile": {"name": "lab"}})
    assert saved.status == 200 and "close" not in saved.headers.get("Connection", "").lower()
    upload = await admin.upload_apk("basic-v1.apk")
    assert upload.status == 200 and "close" not in upload.headers.get("Connection", "").lower()
