"""simulator.gen: generated APKs and OTA zips are real, read right by every reader, deterministic.

Readers checked: the project's own (midm_common.apk / midm_common.ota), the reference server's
uploads, an independent check of both APK signatures here (v1 PKCS#7 over CERT.SF, v2 block over
the chunked digest), and Debian's `apksigner` and `aapt` when installed (skipped otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms  # type: ignore[import-untyped]  # androguard's dependency, untyped
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_der_public_key, pkcs7

from agent.platforms.android_adb import payload_location
from midm_common.apk import read_apk_metadata
from midm_common.ota import METADATA_PATH, read_ota_metadata
from simulator.gen import Signer, build_apk, build_ota, default_signer, ota_metadata, signers
from simulator.gen.ota import incremental
from tests.helpers import Client

FINGERPRINT_1 = "acme/walleye/walleye:14/UP1A.1/100:user/release-keys"
FINGERPRINT_2 = "acme/walleye/walleye:14/UP1A.2/200:user/release-keys"
DEFAULT_CERT_MD5 = "ed6b99a83433526e7c504da11ed3404b"  # Signer.derive("midm-sim release")

APK_CASES: dict[str, dict[str, Any]] = {
    "full": {
        "package": "com.example.sim",
        "version_code": 7,
        "version_name": "7.0",
        "label": "Sim App",
        "min_sdk": 21,
        "target_sdk": 33,
    },
    "bare": {"package": "com.example.bare", "version_code": 0},
    "v1only": {"package": "com.example.old", "version_code": 3, "target_sdk": 28, "v2": False},
    "unicode": {
        "package": "org.example.u_1",
        "version_code": 2_000_000_000,
        "version_name": "2.0-β",
        "label": "Ünïcode 応用",
        "min_sdk": 24,
        "target_sdk": 34,
    },
    "weighty": {"package": "com.example.big", "version_code": 1, "asset_size": 300_000},
}


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", sorted(APK_CASES))
def test_project_reader_reads_what_was_asked(tmp_path: Path, case: str) -> None:
    """midm_common.apk reports the package, versions, label (else the package), SDKs and the
    signer's certMd5; an empty versionName stays empty."""
    args = APK_CASES[case]
    meta = read_apk_metadata(write(tmp_path, "a.apk", build_apk(**args)))
    assert meta.package_name == args["package"]
    assert meta.version_code == args["version_code"]
    assert meta.version_name == args.get("version_name", "")
    assert meta.label == (args.get("label") or args["package"])
    assert meta.min_sdk_version == str(args.get("min_sdk", 21))
    assert meta.target_sdk_version == str(args.get("target_sdk", 33))
    assert meta.max_sdk_version == ""
    assert meta.cert_md5 == default_signer().cert_md5 == DEFAULT_CERT_MD5


def test_cert_md5_is_the_md5_of_the_signing_certificate(tmp_path: Path) -> None:
    """certMd5 is the MD5 of the DER certificate in CERT.RSA (keytool's view), and each signer
    gives its own."""
    release, other = signers(2)
    for signer in (release, other, Signer.generate()):
        content = build_apk(package="com.example.c", version_code=1, signer=signer)
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            (cert,) = pkcs7.load_der_pkcs7_certificates(archive.read("META-INF/CERT.RSA"))
        der = cert.public_bytes(Encoding.DER)
        assert hashlib.md5(der, usedforsecurity=False).hexdigest() == signer.cert_md5
        assert read_apk_metadata(write(tmp_path, "c.apk", content)).cert_md5 == signer.cert_md5
    assert len({release.cert_md5, other.cert_md5, default_signer().cert_md5}) == 3


def test_output_is_deterministic() -> None:
    """Same arguments and signer: same bytes; derived signers are the same in every process
    (pinned md5); another version or signer changes the bytes."""
    args = APK_CASES["full"]
    assert build_apk(**args) == build_apk(**args)
    assert Signer.derive("midm-sim release").cert_md5 == DEFAULT_CERT_MD5
    assert build_apk(**args) != build_apk(**{**args, "version_code": 8})
    assert build_apk(**args) != build_apk(**args, signer=signers(1)[0])
    ota: dict[str, Any] = {
        "device": "walleye",
        "post_build": FINGERPRINT_2,
        "post_timestamp": 1_790_000_000,
    }
    assert build_ota(**ota) == build_ota(**ota)
    assert build_ota(**ota) != build_ota(**ota, pre_build=FINGERPRINT_1)


@pytest.mark.parametrize("case", sorted(APK_CASES))
def test_v1_signature_verifies(case: str) -> None:
    """MANIFEST.MF digests every entry, CERT.SF digests the manifest and its sections, and
    CERT.RSA is an RSA/SHA-256 signature over CERT.SF by the signer's key."""
    content = build_apk(**APK_CASES[case])
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    manifest, signature_file = files["META-INF/MANIFEST.MF"], files["META-INF/CERT.SF"]
    sections = manifest.split(b"\r\n\r\n")[1:-1]
    digested = {}
    for section in sections:
        fields = dict(line.decode().split(": ", 1) for line in section.split(b"\r\n"))
        digested[fields["Name"]] = fields["SHA-256-Digest"]
    unsigned = {n: d for n, d in files.items() if not n.startswith("META-INF/")}
    assert digested == {n: _b64_sha256(d) for n, d in unsigned.items()}
    assert f"SHA-256-Digest-Manifest: {_b64_sha256(manifest)}".encode() in signature_file
    for section in sections:
        assert _b64_sha256(section + b"\r\n\r\n").encode() in signature_file
    assert (b"X-Android-APK-Signed: 2" in signature_file) is APK_CASES[case].get("v2", True)
    signer_info = cms.ContentInfo.load(files["META-INF/CERT.RSA"])["content"]["signer_infos"][0]
    assert signer_info["signed_attrs"].native is None  # no signing time: deterministic
    default_signer().key.public_key().verify(
        signer_info["signature"].native, signature_file, padding.PKCS1v15(), hashes.SHA256()
    )


@pytest.mark.parametrize("case", ["full", "weighty", "unicode"])
def test_v2_block_verifies(case: str) -> None:
    """The APK Signing Block sits before the central directory (the end record points past
    it); its v2 signer's digest is the chunked SHA-256 of entries, directory and end record,
    signed by the signer's key, with the signer's certificate and public key."""
    content = build_apk(**APK_CASES[case])
    (cd_at,) = struct.unpack_from("<I", content, len(content) - 22 + 16)
    assert content[cd_at - 16 : cd_at] == b"APK Sig Block 42"
    (size,) = struct.unpack_from("<Q", content, cd_at - 24)
    block_at = cd_at - size - 8
    assert struct.unpack_from("<Q", content, block_at) == (size,)
    (pair_len, block_id) = struct.unpack_from("<QI", content, block_at + 8)
    assert block_id == 0x7109871A
    value = io.BytesIO(content[block_at + 20 : block_at + 16 + pair_len])
    signers_seq = _lp(value)
    signer = io.BytesIO(_lp(io.BytesIO(signers_seq)))
    signed_data = _lp(signer)
    signatures = io.BytesIO(_lp(signer))
    public_key = _lp(signer)
    data = io.BytesIO(signed_data)
    digests, certs = io.BytesIO(_lp(data)), io.BytesIO(_lp(data))
    digest_item = io.BytesIO(_lp(digests))
    assert struct.unpack("<I", digest_item.read(4)) == (0x0103,)
    digest = _lp(digest_item)
    assert _lp(certs) == default_signer().cert_der
    eocd = bytearray(content[-22:])
    struct.pack_into("<I", eocd, 16, block_at)
    assert digest == _chunked(content[:block_at], content[cd_at:-22], bytes(eocd))
    signature_item = io.BytesIO(_lp(signatures))
    assert struct.unpack("<I", signature_item.read(4)) == (0x0103,)
    key = load_der_public_key(public_key)
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    key.verify(_lp(signature_item), signed_data, padding.PKCS1v15(), hashes.SHA256())


def test_stored_entries_are_aligned() -> None:
    """Stored entries (an APK's asset, an OTA's payload) start on a 4-byte boundary."""
    for content in (
        build_apk(**APK_CASES["weighty"]),
        build_ota(device="d", post_build=FINGERPRINT_2, post_timestamp=1, payload_size=1000),
    ):
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            stored = [i for i in archive.infolist() if i.compress_type == zipfile.ZIP_STORED]
            assert stored
            for info in stored:
                name_len, extra_len = struct.unpack_from("<HH", content, info.header_offset + 26)
                assert (info.header_offset + 30 + name_len + extra_len) % 4 == 0, info.filename


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"package": "nodots"}, "package"),
        ({"package": "com.1bad"}, "package"),
        ({"version_code": -1}, "version_code"),
        ({"version_code": 1 << 31}, "version_code"),
        ({"min_sdk": 0}, "min_sdk"),
        ({"asset_size": -1}, "asset_size"),
    ],
)
def test_bad_apk_arguments(args: dict[str, Any], needle: str) -> None:
    """Values Android would not accept raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=needle):
        build_apk(**{"package": "com.example.ok", "version_code": 1, **args})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"device": ""}, "device"),
        ({"post_build": "a\nb"}, "post_build"),
        ({"post_timestamp": -1}, "post_timestamp"),
        ({"payload_size": 10}, "payload_size"),
        ({"extra": {"k=v": "x"}}, "extra"),
    ],
)
def test_bad_ota_arguments(args: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        build_ota(**{"device": "d", "post_build": FINGERPRINT_2, "post_timestamp": 1, **args})


@pytest.mark.parametrize("ab", [True, False])
@pytest.mark.parametrize("partial", [False, True])
def test_ota_metadata_read_by_project_reader(tmp_path: Path, ab: bool, partial: bool) -> None:
    """midm_common.ota reads type, devices, builds and timestamp; a pre_build makes it partial;
    the incrementals come from the fingerprints."""
    content = build_ota(
        device="walleye|taimen",
        post_build=FINGERPRINT_2,
        post_timestamp=1_790_000_000,
        pre_build=FINGERPRINT_1 if partial else None,
        ab=ab,
    )
    meta = read_ota_metadata(write(tmp_path, "o.zip", content))
    assert meta.ab_update is ab and meta.is_partial is partial
    assert meta.pre_devices == ("walleye", "taimen")
    assert meta.post_build == FINGERPRINT_2 and meta.post_timestamp == 1_790_000_000
    assert meta.pre_build == (FINGERPRINT_1 if partial else "")
    assert meta.downgrade is False
    assert meta.raw["post-build-incremental"] == "200"
    assert meta.raw.get("pre-build-incremental") == ("100" if partial else None)
    assert meta.raw == ota_metadata(
        device="walleye|taimen",
        post_build=FINGERPRINT_2,
        post_timestamp=1_790_000_000,
        pre_build=FINGERPRINT_1 if partial else None,
        ab=ab,
    )


def test_ota_extra_keys_and_downgrade(tmp_path: Path) -> None:
    """`extra` adds metadata keys or overrides generated ones."""
    content = build_ota(
        device="d",
        post_build=FINGERPRINT_1,
        post_timestamp=5,
        extra={"ota-downgrade": "yes", "post-sdk-level": "34", "ota-type": "BLOCK"},
    )
    meta = read_ota_metadata(write(tmp_path, "o.zip", content))
    assert meta.downgrade is True and meta.raw["post-sdk-level"] == "34"
    assert meta.ab_update is False


def test_ab_payload_is_where_update_engine_looks(tmp_path: Path) -> None:
    """A/B: payload.bin is stored, located by the Android platform's reader, starts with CrAU,
    and payload_properties.txt states its size and SHA-256."""
    content = build_ota(device="d", post_build=FINGERPRINT_2, post_timestamp=1, payload_size=5000)
    offset, size, headers = payload_location(write(tmp_path, "ab.zip", content))
    payload = content[offset : offset + size]
    assert size == 5000 and payload[:4] == b"CrAU"
    properties = dict(line.split("=", 1) for line in headers.splitlines())
    assert properties["FILE_SIZE"] == "5000"
    assert properties["FILE_HASH"] == _b64_sha256(payload)


def test_block_package_layout() -> None:
    """BLOCK (non-A/B): an updater-script and the block image, no payload."""
    content = build_ota(
        device="d", post_build=FINGERPRINT_2, post_timestamp=1, ab=False, payload_size=777
    )
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = set(archive.namelist())
        assert names == {
            METADATA_PATH,
            "META-INF/com/google/android/updater-script",
            "system.new.dat",
        }
        assert archive.getinfo("system.new.dat").file_size == 777


def test_incremental_of_fingerprints() -> None:
    assert incremental(FINGERPRINT_1) == "100"
    assert incremental("not a fingerprint") == ""
    assert incremental("a:b/c:d") == ""


async def test_server_accepts_generated_apks(admin: Client) -> None:
    """The reference server's upload parses a generated APK into the asked appInfo; identical
    bytes return the same app; another signer's build of a new version is another app."""
    content = build_apk(**APK_CASES["full"])
    reply = await admin.upload("/ota/api/app/upload", content, "sim.apk")
    assert reply.status == 200, reply.body
    info = reply.data["appInfo"]
    assert (info["packageName"], info["versionCode"], info["versionName"], info["label"]) == (
        "com.example.sim",
        7,
        "7.0",
        "Sim App",
    )
    assert (info["minSdkVersion"], info["targetSdkVersion"]) == ("21", "33")
    assert info["certMd5"] == DEFAULT_CERT_MD5
    assert reply.data["fileInfo"]["length"] == len(content)
    again = await admin.upload("/ota/api/app/upload", build_apk(**APK_CASES["full"]), "x.apk")
    assert again.data["fileUuid"] == reply.data["fileUuid"]
    other = signers(2)[1]
    newer = build_apk(**{**APK_CASES["full"], "version_code": 8}, signer=other)
    third = await admin.upload("/ota/api/app/upload", newer, "sim8.apk")
    assert third.status == 200, third.body
    assert third.data["appInfo"]["certMd5"] == other.cert_md5
    assert third.data["fileUuid"] != reply.data["fileUuid"]


async def test_server_accepts_generated_otas(admin: Client) -> None:
    """The server's OTA upload maps the generated metadata onto otaInfo: a full A/B image and
    a partial non-A/B one."""
    full = build_ota(device="walleye", post_build=FINGERPRINT_2, post_timestamp=1_790_000_000)
    reply = await admin.upload("/ota/api/ota/upload", full, "full.zip")
    assert reply.status == 200, reply.body
    info = reply.data["otaInfo"]
    assert (info["abUpdate"], info["deviceId"], info["postBuild"], info["preBuild"]) == (
        True,
        "walleye",
        FINGERPRINT_2,
        "",
    )
    assert info["buildDate"] == 1_790_000_000
    partial = build_ota(
        device="walleye",
        post_build=FINGERPRINT_2,
        post_timestamp=1_790_000_000,
        pre_build=FINGERPRINT_1,
        ab=False,
    )
    reply = await admin.upload(
        "/ota/api/ota/upload", partial, "inc.zip", otaInfo=json.dumps({"type": "region"})
    )
    assert reply.status == 200, reply.body
    info = reply.data["otaInfo"]
    assert info["preBuild"] == FINGERPRINT_1 and info["abUpdate"] is False
    assert info["type"] == "region"


APKSIGNER = shutil.which("apksigner")
AAPT = shutil.which("aapt")


@pytest.mark.skipif(APKSIGNER is None, reason="Debian's apksigner is not installed")
@pytest.mark.parametrize(
    ("case", "schemes"), [("full", ("v1", "v2")), ("v1only", ("v1",)), ("unicode", ("v2",))]
)
def test_apksigner_verifies(tmp_path: Path, case: str, schemes: tuple[str, ...]) -> None:
    """`apksigner verify` accepts the APK with the expected schemes and reports the signer's
    certificate MD5 (for minSdk >= 24 it skips v1 when v2 is there: Android N+ ignores v1)."""
    path = write(tmp_path, "a.apk", build_apk(**APK_CASES[case]))
    out = _run([str(APKSIGNER), "verify", "-v", "--print-certs", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    for scheme, number in (("v1", "JAR signing"), ("v2", "APK Signature Scheme v2")):
        verified = "true" if scheme in schemes else "false"
        assert f"Verified using {scheme} scheme ({number}): {verified}" in out.stdout
    assert f"certificate MD5 digest: {DEFAULT_CERT_MD5}" in out.stdout


@pytest.mark.skipif(APKSIGNER is None, reason="Debian's apksigner is not installed")
def test_apksigner_refuses_v1_only_for_target_sdk_30(tmp_path: Path) -> None:
    """Why v2 is on by default: a v1-only APK targeting SDK >= 30 is refused (as Android 11+
    refuses to install it)."""
    content = build_apk(package="com.example.v1", version_code=1, target_sdk=30, v2=False)
    out = _run([str(APKSIGNER), "verify", str(write(tmp_path, "a.apk", content))])
    assert out.returncode != 0
    assert "v2" in out.stdout + out.stderr


@pytest.mark.skipif(AAPT is None, reason="Debian's aapt is not installed")
def test_aapt_reads_the_manifest(tmp_path: Path) -> None:
    """aapt (the Android SDK's own parser) reads package, versions and SDKs, and the label."""
    path = write(tmp_path, "a.apk", build_apk(**APK_CASES["full"]))
    badging = _run([str(AAPT), "dump", "badging", str(path)]).stdout
    assert "package: name='com.example.sim' versionCode='7' versionName='7.0'" in badging
    assert "sdkVersion:'21'" in badging and "targetSdkVersion:'33'" in badging
    tree = _run([str(AAPT), "dump", "xmltree", str(path), "AndroidManifest.xml"]).stdout
    assert 'A: android:label(0x01010001)="Sim App"' in tree
    assert "A: android:hasCode(0x0101000c)=(type 0x12)0x0" in tree


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _lp(stream: io.BytesIO) -> bytes:
    (length,) = struct.unpack("<I", stream.read(4))
    return stream.read(length)


def _chunked(*sections: bytes) -> bytes:
    size = 1 << 20
    chunks = [
        hashlib.sha256(b"\xa5" + struct.pack("<I", len(part)) + part).digest()
        for section in sections
        for part in (section[i : i + size] for i in range(0, len(section), size))
    ]
    return hashlib.sha256(b"\x5a" + struct.pack("<I", len(chunks)) + b"".join(chunks)).digest()
