"""APK signatures verified at upload (issue 15, item 3): an APK whose v1, v2 or v3 signature does
not verify (a copied CERT.RSA, a changed byte, a corrupted block, a stripped block), an unsigned
one and a v1-only one targeting SDK 30 are 40001 naming the file and the scheme, over a real
socket, with nothing stored; each valid fixture is accepted with the verified signer's certMd5."""

from __future__ import annotations

import pytest

from tests.apksigning import VALID
from tests.helpers import Client, Server

BAD = {
    # the reproduction: another APK's MANIFEST.MF, RELEASE.SF and CERT (.RSA) copied in
    "spoofed-v1cert.apk": "v1 JAR signature does not verify (the MANIFEST.MF digest of",
    "spoofed-v1block.apk": "v1 JAR signature does not verify (META-INF/OTHER.RSA",
    "tampered-entry.apk": "APK Signature Scheme v3 signature does not verify (content digest",
    "tampered-v1only.apk": "v1 JAR signature does not verify (the MANIFEST.MF digest of resources",
    "corrupt-v2block.apk": "APK Signature Scheme v2 signature does not verify (RSA PKCS#1",
    "stripped-v2.apk": "v1 JAR signature does not verify (X-Android-APK-Signed says a v2 block",
    "v1only-target30.apk": "v1 JAR scheme only, but targetSdkVersion 30",
    "unsigned.apk": "not signed",
}


@pytest.mark.parametrize("name", sorted(BAD))
async def test_bad_signatures_are_40001_naming_the_scheme(
    server: Server, admin: Client, name: str
) -> None:
    """Each bad APK is 400/40001 naming the file and the scheme; app/all, the files table and
    the blob folder are as they were (one good app uploaded before stays alone)."""
    assert (await admin.upload_apk("basic-v1.apk")).status == 200
    before = (await admin.get("/ota/api/app/all")).data
    files_before = server.files_on_disk()
    reply = await admin.upload_apk(name)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    message = reply.body["message"]
    assert name in message and BAD[name] in message, message
    assert (await admin.get("/ota/api/app/all")).data == before
    assert server.sql("SELECT COUNT(*) FROM files")[0][0] == 1
    assert server.files_on_disk() == files_before


@pytest.mark.parametrize("name", sorted(VALID))
async def test_valid_fixtures_are_accepted_with_the_verified_cert(admin: Client, name: str) -> None:
    """Every validly signed fixture (v1 only, v1+v2+v3, v2+v3 ECDSA) is accepted; its certMd5
    is the MD5 of the certificate apksigner verifies (v3's, else v2's, else v1's)."""
    reply = await admin.upload_apk(name)
    assert reply.status == 200, reply.body
    (app,) = (await admin.get("/ota/api/app/all")).data
    assert app["appInfo"]["certMd5"] == VALID[name][1]
