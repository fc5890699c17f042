"""§4 file download: bytes, ETag (sha256), X-Checksum-SHA256, Range/206, 304, 416, credentials."""

from __future__ import annotations

import hashlib

from multidict import CIMultiDict

from server.auth import hash_secret
from tests.helpers import APKS, Client, Server


async def fetch(
    client: Client, file_uuid: str, **headers: str
) -> tuple[int, bytes, CIMultiDict[str]]:
    async with client.http.get(
        f"{client.base}/ota/api/file/{file_uuid}", headers=client.headers(headers)
    ) as response:
        return response.status, await response.read(), response.headers.copy()


async def uploaded(admin: Client) -> tuple[str, bytes]:
    reply = await admin.upload_apk("basic-v1.apk")
    return reply.data["fileUuid"], (APKS / "basic-v1.apk").read_bytes()


async def test_full_download_with_checksums(admin: Client) -> None:
    """The whole file, with ETag and X-Checksum-SHA256 equal to its sha256."""
    file_uuid, content = await uploaded(admin)
    status, body, headers = await fetch(admin, file_uuid)
    sha = hashlib.sha256(content).hexdigest()
    assert (status, body) == (200, content)
    assert headers["ETag"] == f'"{sha}"' and headers["X-Checksum-SHA256"] == sha
    assert headers["Accept-Ranges"] == "bytes" and int(headers["Content-Length"]) == len(content)


async def test_ranges(admin: Client) -> None:
    """bytes=a-b, bytes=a- and bytes=-n give 206 with the right slice and Content-Range."""
    file_uuid, content = await uploaded(admin)
    size = len(content)
    for header, expected, first, last in (
        ("bytes=0-99", content[:100], 0, 99),
        ("bytes=100-", content[100:], 100, size - 1),
        ("bytes=-10", content[-10:], size - 10, size - 1),
        ("bytes=8000-999999", content[8000:], 8000, size - 1),
    ):
        status, body, headers = await fetch(admin, file_uuid, Range=header)
        assert (status, body) == (206, expected), header
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"


async def test_resume_after_partial_read(admin: Client) -> None:
    """A client that read part of the file resumes with Range and If-Range and gets the rest."""
    file_uuid, content = await uploaded(admin)
    _, _, headers = await fetch(admin, file_uuid, Range="bytes=0-4095")
    status, rest, _ = await fetch(
        admin, file_uuid, Range="bytes=4096-", **{"If-Range": headers["ETag"]}
    )
    assert status == 206 and content[:4096] + rest == content


async def test_conditional_requests(admin: Client) -> None:
    """If-None-Match with the ETag is 304; If-Range with another ETag sends everything (200)."""
    file_uuid, content = await uploaded(admin)
    etag = (await fetch(admin, file_uuid))[2]["ETag"]
    status, body, _ = await fetch(admin, file_uuid, **{"If-None-Match": etag})
    assert (status, body) == (304, b"")
    status, body, _ = await fetch(admin, file_uuid, Range="bytes=0-9", **{"If-Range": '"other"'})
    assert (status, body) == (200, content)


async def test_unsatisfiable_range_is_416(admin: Client) -> None:
    """A range past the end is 416 with the envelope and Content-Range: bytes */N."""
    file_uuid, content = await uploaded(admin)
    reply = await admin.call("GET", f"/ota/api/file/{file_uuid}", headers={"Range": "bytes=99999-"})
    assert (reply.status, reply.code) == (416, 41600)
    assert reply.headers["Content-Range"] == f"bytes */{len(content)}"


async def test_unknown_and_foreign_files_are_40400(admin: Client, other: Client) -> None:
    """An unknown fileUuid, or one of another site, is 40400."""
    file_uuid, _ = await uploaded(admin)
    assert (await admin.get("/ota/api/file/no-such-file")).code == 40400
    assert (await other.get(f"/ota/api/file/{file_uuid}")).code == 40400


async def test_device_credentials_may_download(server: Server, admin: Client) -> None:
    """A device token of the file's site downloads; a revoked or foreign one is 40100."""
    file_uuid, content = await uploaded(admin)
    await admin.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "D1"}}}])
    server.sql("UPDATE devices SET token_hash = ? WHERE serial_no = 'D1'", hash_secret("dev-token"))
    device = Client(admin.http, server.base, admin.key, "dev-token", scheme="Device")
    status, body, _ = await fetch(device, file_uuid)
    assert (status, body) == (200, content)
    beta = Client(admin.http, server.base, server.sites["beta"].key, "dev-token", scheme="Device")
    assert (await beta.get(f"/ota/api/file/{file_uuid}")).code == 40100
    await admin.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "D1"}}}])
    assert (await device.get(f"/ota/api/file/{file_uuid}")).code == 40100


async def test_download_needs_credentials(server: Server, admin: Client) -> None:
    """No Authorization header is 40100."""
    file_uuid, _ = await uploaded(admin)
    anonymous = Client(admin.http, server.base, admin.key)
    assert (await anonymous.get(f"/ota/api/file/{file_uuid}")).code == 40100
