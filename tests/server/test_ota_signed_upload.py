"""§4 signed images at upload: otaCert is the signer's certificate, read from the package's
whole-file signature; a signature block that is present but does not verify is 40001 naming the
file and the signature, and nothing is stored. Packages are signed in the tests
(tests/ota_signing.py, as `signapk -w` signs)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import Client, Server, ota_zip
from tests.ota_signing import (
    MESSAGE,
    assemble,
    block_of,
    payload_offset,
    sign_package,
    signer,
)

META = {
    "ota-type": "AB",
    "pre-device": "walleye",
    "post-build": "acme/walleye/walleye:14/UP1A/200:user/release-keys",
    "post-timestamp": "1790000000",
}
UPLOAD = "/ota/api/ota/upload"


def package() -> bytes:
    return ota_zip(META, payload=bytes(range(256)) * 8)


async def assert_refused(server: Server, admin: Client, content: bytes, needle: str) -> None:
    reply = await admin.upload(UPLOAD, content, "signed.zip")
    assert (reply.status, reply.code) == (400, 40001), reply.body
    message = reply.body["message"]
    assert "signed.zip" in message and needle in message, message
    assert (await admin.get("/ota/api/ota/all")).data == []
    assert server.sql("SELECT COUNT(*) FROM otas")[0][0] == 0
    assert server.files_on_disk() == []


async def test_signed_package_gets_the_signers_certificate(admin: Client) -> None:
    """A package signed as signapk signs it (RSA, SHA-256, no signed attributes) is stored with
    otaInfo.otaCert = its signer's certificate as PEM."""
    who = signer("release")
    reply = await admin.upload(UPLOAD, sign_package(package(), who), "signed.zip")
    assert reply.status == 200, reply.body
    assert reply.data["otaInfo"]["otaCert"] == who.cert_pem
    listed = (await admin.get("/ota/api/ota/all")).data
    assert [o["otaInfo"]["otaCert"] for o in listed] == [who.cert_pem]


async def test_ec_signature_with_signed_attributes(admin: Client) -> None:
    """ECDSA P-256 with signed attributes (contentType, messageDigest) verifies too."""
    who = signer("ec-release", "ec")
    content = sign_package(package(), who, attributes=True)
    reply = await admin.upload(UPLOAD, content, "ec.zip")
    assert reply.status == 200, reply.body
    assert reply.data["otaInfo"]["otaCert"] == who.cert_pem


async def test_unsigned_package_keeps_the_form_cert(admin: Client) -> None:
    """An unsigned package is accepted; its otaCert is the otaInfo field's, or empty (as before)."""
    plain = await admin.upload(UPLOAD, package(), "plain.zip")
    assert plain.status == 200 and plain.data["otaInfo"]["otaCert"] == ""
    claimed = await admin.upload(
        UPLOAD, ota_zip(META, extra=b"2"), "c.zip", otaInfo=json.dumps({"otaCert": "claimed"})
    )
    assert claimed.data["otaInfo"]["otaCert"] == "claimed"


async def test_form_cannot_forge_the_signer(server: Server, admin: Client) -> None:
    """For a signed package an otaInfo.otaCert naming another certificate is 40001 and nothing
    is stored; an empty one, or the signer's own, leaves the signer's."""
    who, other = signer("release"), signer("other")
    content = sign_package(package(), who)
    forged = await admin.upload(
        UPLOAD, content, "f.zip", otaInfo=json.dumps({"otaCert": other.cert_pem})
    )
    assert (forged.status, forged.code) == (400, 40001), forged.body
    assert "otaInfo.otaCert" in forged.body["message"]
    assert server.sql("SELECT COUNT(*) FROM otas")[0][0] == 0 and server.files_on_disk() == []
    for given in ("", None, who.cert_pem):
        reply = await admin.upload(
            UPLOAD, content, "f.zip", otaInfo=json.dumps({"otaCert": given, "skuId": "S"})
        )
        assert reply.status == 200, reply.body
        assert reply.data["otaInfo"]["otaCert"] == who.cert_pem


async def test_tampered_signed_part_is_refused(server: Server, admin: Client) -> None:
    """One byte changed in the signed part (inside payload.bin: the zip still reads)."""
    content = bytearray(sign_package(package(), signer("release")))
    content[payload_offset(bytes(content)) + 5] ^= 0x01
    await assert_refused(server, admin, bytes(content), "signature: the signature does not verify")


async def test_tampered_with_signed_attributes_is_refused(server: Server, admin: Client) -> None:
    content = bytearray(sign_package(package(), signer("release"), attributes=True))
    content[payload_offset(bytes(content)) + 5] ^= 0x01
    await assert_refused(server, admin, bytes(content), "is not the signed messageDigest")


async def test_changed_signature_is_refused(server: Server, admin: Client) -> None:
    """The last byte of the signature value (the end of the DER block) flipped."""
    content = bytearray(sign_package(package(), signer("release")))
    content[-7] ^= 0x01
    await assert_refused(server, admin, bytes(content), "signature: the signature does not verify")


def with_block(block: bytes, message: bytes = MESSAGE) -> bytes:
    signed, _ = block_of(sign_package(package(), signer("release")))
    return assemble(signed, block, message)


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        (b"\x30\x82\x10\x00" + b"\0" * 40, "signature: the block is not a DER PKCS#7"),
        (b"garbage, not DER at all", "signature: the block is not a DER PKCS#7"),
        (b"", "signature: the footer's block start 6 lies in the footer"),
    ],
    ids=["truncated-der", "garbage", "empty"],
)
async def test_garbage_block_is_refused(
    server: Server, admin: Client, block: bytes, needle: str
) -> None:
    await assert_refused(server, admin, with_block(block), needle)


async def test_truncated_block_is_refused(server: Server, admin: Client) -> None:
    """The DER block cut short by 40 bytes (its footer rewritten to match)."""
    signed, block = block_of(sign_package(package(), signer("release")))
    await assert_refused(server, admin, assemble(signed, block[:-40]), "signature: the block")


def lying(content: bytes, *, start: int | None = None, size: int | None = None) -> bytes:
    """`content` with the footer's signature start and/or comment size replaced."""
    footer = bytearray(content[-6:])
    if start is not None:
        footer[0:2] = start.to_bytes(2, "little")
    if size is not None:
        footer[4:6] = size.to_bytes(2, "little")
    return content[:-6] + bytes(footer)


def signed() -> bytes:
    return sign_package(package(), signer("release"))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: lying(signed(), start=0xFFF0), "past the"),
        (lambda: lying(signed(), start=3), "lies in the footer"),
        (lambda: lying(signed(), size=0xFFFF, start=0xFFFF), "more than the file holds"),
        (lambda: lying(signed(), size=len(signed()) - 30), "no end-of-central-directory"),
        (lambda: lying(signed(), size=int.from_bytes(signed()[-2:], "little") - 1), "signature"),
        # the zip reader takes the last marker: another archive, refused (not a valid zip)
        (lambda: with_block(b"PK\x05\x06" + b"\0" * 30), "signed.zip: "),
    ],
    ids=[
        "start-past-comment",
        "start-in-footer",
        "size-past-file",
        "size-misplaced",
        "size-off-by-one",
        "eocd-in-comment",
    ],
)
async def test_comment_lying_about_sizes_is_refused(
    server: Server, admin: Client, make: object, needle: str
) -> None:
    """A footer whose sizes do not hold is 40001 naming the file, never a crash or a 500."""
    assert callable(make)
    reply = await admin.upload(UPLOAD, make(), "signed.zip")
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert "signed.zip" in reply.body["message"] and needle in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM otas")[0][0] == 0
    assert server.files_on_disk() == []
