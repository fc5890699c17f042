"""Whole-file OTA signatures (§4) and `--ota-certs` (§8).

The verifier (midm_common.ota_signature) on packages signed in the tests (tests/ota_signing.py,
as `signapk -w`), on hostile footers and blocks, and against an independent implementation:
OpenSSL's `cms -verify` on our blocks and our verifier on `openssl cms -sign` blocks (skipped
without openssl). Then the agent: with --ota-certs it installs only images signed by a trusted
certificate and reports `failed`/`bad_signature` otherwise (real agent, real server); the
certificates come from a PEM file, a folder, or an Android device's otacerts (fake adb); bad
settings are one line.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig
from agent.errors import ConfigError, PlatformError
from agent.platforms.android_adb import AndroidPlatform, parse_otacerts
from agent.runtime.artifacts import ArtifactStore
from agent.runtime.image_trust import image_trust, read_pem_keys
from midm_common.ota import read_ota_metadata
from midm_common.ota_signature import (
    MAX_BLOCK_BYTES,
    SignatureStatus,
    read_signature,
    trusted_by,
    trusted_keys_of_pem,
)
from server.context import SERVICES
from server.services.upload_parsers import Parsed, ParserWorkers
from tests.agent.agent_harness import make_agent
from tests.agent.test_apply import FP1, FP2, events, profile, sim
from tests.agent.test_cli import agent_cli
from tests.helpers import FIXTURES, Client, Server, ota_zip
from tests.ota_signing import (
    Signer,
    assemble,
    block_of,
    payload_offset,
    sign_package,
    signed_part,
    signer,
)

META = {"ota-type": "AB", "pre-device": "sim", "post-build": FP2, "post-timestamp": "1800000000"}
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


def package(payload: bytes = b"payload" * 64) -> bytes:
    return ota_zip(META, payload=payload)


def signature_of(content: bytes) -> tuple[SignatureStatus, str]:
    result = read_signature(io.BytesIO(content), len(content))
    return result.status, result.reason


# -- the verifier --------------------------------------------------------------------------


def test_unsigned_and_signed() -> None:
    """No footer: UNSIGNED. signapk's layout: VALID, with the signer's PEM and key."""
    who = signer("release")
    assert signature_of(package()) == (SignatureStatus.UNSIGNED, "")
    content = sign_package(package(), who)
    result = read_signature(io.BytesIO(content), len(content))
    assert result.status is SignatureStatus.VALID and result.digest == "sha256"
    assert result.signer_pem == who.cert_pem
    assert result.signer_key in trusted_keys_of_pem(who.cert_pem.encode())


def test_every_byte_of_the_signed_part_counts() -> None:
    """Flipping any byte of the signed part (sampled across it) makes the signature invalid."""
    content = sign_package(package(), signer("release"))
    signed_length = len(block_of(content)[0])
    for at in range(0, signed_length, max(1, signed_length // 23)):
        changed = bytearray(content)
        changed[at] ^= 0x40
        status, reason = signature_of(bytes(changed))
        assert status is SignatureStatus.INVALID and reason.startswith("signature: "), at


def test_block_limit() -> None:
    """A block over MAX_BLOCK_BYTES is refused, naming the limit."""
    signed, block = block_of(sign_package(package(), signer("release")))
    big = assemble(signed, block + b"\0" * MAX_BLOCK_BYTES)
    assert "the limit is" in signature_of(big)[1]


def test_certificate_of_an_unknown_version() -> None:
    """A certificate that cryptography refuses to load (X.509 version 2 here, found by
    hypothesis) is INVALID, not an exception."""
    signed, block = block_of(sign_package(package(), signer("release")))
    version = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2: X.509 v3
    assert block.count(version) == 1
    status, reason = signature_of(assemble(signed, block.replace(version, version[:-1] + b"\x01")))
    assert status is SignatureStatus.INVALID and "certificate does not parse" in reason, reason


def test_read_ota_metadata_carries_the_signature(tmp_path: Path) -> None:
    """The one OTA reader returns the signature with the metadata (the agent's cache keeps it
    per content); a bad signature is not raised there."""
    path = tmp_path / "p.zip"
    content = bytearray(sign_package(package(), signer("release")))
    path.write_bytes(content)
    assert read_ota_metadata(path).signature.status is SignatureStatus.VALID
    content[-7] ^= 1
    path.write_bytes(content)
    meta = read_ota_metadata(path)
    assert meta.post_build == FP2 and meta.signature.status is SignatureStatus.INVALID


@settings(max_examples=200, deadline=None)
@given(
    tail=st.binary(max_size=80),
    start=st.integers(0, 0xFFFF),
    size=st.integers(0, 0xFFFF),
)
def test_hostile_footers_never_raise(tail: bytes, start: int, size: int) -> None:
    """Any footer after any bytes: a status and a reason, never an exception."""
    footer = start.to_bytes(2, "little") + b"\xff\xff" + size.to_bytes(2, "little")
    for content in (tail + footer, package() + tail + footer):
        status, _ = signature_of(content)
        assert status in (SignatureStatus.INVALID, SignatureStatus.UNSIGNED)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(1, 400), junk=st.binary(max_size=8), at=st.integers(0, 1 << 16))
def test_mangled_blocks_never_raise(cut: int, junk: bytes, at: int) -> None:
    """Truncated, spliced or single-byte-changed DER blocks are INVALID with a reason."""
    signed, block = block_of(sign_package(package(), signer("release")))
    flipped = bytearray(block)
    flipped[at % len(block)] ^= 1 + at % 255
    for mangled in (block[:-cut], block[:cut] + junk + block[cut + len(junk) :], bytes(flipped)):
        status, reason = signature_of(assemble(signed, mangled))
        assert status is not SignatureStatus.UNSIGNED
        assert status is SignatureStatus.VALID or reason.startswith("signature: ")


def test_trusted_by() -> None:
    """Trust is the signer's public key: trusted, another key, unsigned, invalid."""
    who, other = signer("release"), signer("other")
    keys = trusted_keys_of_pem(who.cert_pem.encode())
    good = sign_package(package(), who)
    result = read_signature(io.BytesIO(good), len(good))
    assert trusted_by(result, keys) == ""
    assert "not trusted" in trusted_by(result, trusted_keys_of_pem(other.cert_pem.encode()))
    unsigned = read_signature(io.BytesIO(package()), len(package()))
    assert trusted_by(unsigned, keys) == "the package is not signed"


# -- an independent implementation: OpenSSL --------------------------------------------------


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, check=False)


def write_signer(folder: Path, who: Signer) -> None:
    (folder / "cert.pem").write_text(who.cert_pem)
    (folder / "key.pem").write_bytes(who.key_pem)


@needs_openssl
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_openssl_verifies_our_blocks(tmp_path: Path, kind: str) -> None:
    """`openssl cms -verify` accepts the block over the signed part as we locate it, and
    refuses it over a changed signed part."""
    who = signer(f"interop-{kind}", kind)
    write_signer(tmp_path, who)
    signed, block = block_of(sign_package(package(), who))
    (tmp_path / "block.der").write_bytes(block)
    (tmp_path / "part.bin").write_bytes(signed)
    (tmp_path / "bad.bin").write_bytes(signed[:-1] + bytes([signed[-1] ^ 1]))
    verify = ["cms", "-verify", "-binary", "-inform", "DER", "-in", "block.der", "-noverify"]
    good = openssl(*verify, "-content", "part.bin", "-out", "/dev/null", cwd=tmp_path)
    assert good.returncode == 0 and b"Verification successful" in good.stderr, good.stderr
    bad = openssl(*verify, "-content", "bad.bin", "-out", "/dev/null", cwd=tmp_path)
    assert bad.returncode != 0 and b"Verification failure" in bad.stderr, bad.stderr


@needs_openssl
@pytest.mark.parametrize(
    ("kind", "flags", "digest"),
    [
        ("rsa", ["-noattr", "-md", "sha256"], "sha256"),  # signapk's shape
        ("rsa", ["-md", "sha1"], "sha1"),  # an old package: SHA-1, signed attributes
        ("ec", ["-noattr", "-md", "sha256"], "sha256"),
        ("ec", ["-md", "sha256"], "sha256"),
    ],
)
def test_we_verify_openssl_blocks(tmp_path: Path, kind: str, flags: list[str], digest: str) -> None:
    """Blocks made by `openssl cms -sign -binary -outform DER` (detached), put in the comment
    as signapk does, verify; with one byte of the signed part changed they do not."""
    who = signer(f"interop-{kind}", kind)
    write_signer(tmp_path, who)
    part = signed_part(package())
    (tmp_path / "part.bin").write_bytes(part)
    made = openssl(
        "cms", "-sign", "-binary", "-outform", "DER", "-in", "part.bin", "-signer", "cert.pem",
        "-inkey", "key.pem", *flags, "-out", "block.der", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    content = assemble(part, (tmp_path / "block.der").read_bytes())
    result = read_signature(io.BytesIO(content), len(content))
    assert (result.status, result.digest, result.signer_pem) == (
        SignatureStatus.VALID,
        digest,
        who.cert_pem,
    ), result.reason
    changed = bytearray(content)
    changed[40] ^= 1
    assert signature_of(bytes(changed))[0] is SignatureStatus.INVALID


# -- --ota-certs -----------------------------------------------------------------------------


def test_pem_file_and_folder(tmp_path: Path) -> None:
    """A PEM file (several certificates allowed) or a folder of *.pem/*.crt files."""
    who, other = signer("release"), signer("other")
    both = tmp_path / "both.pem"
    both.write_text(who.cert_pem + other.cert_pem)
    keys = read_pem_keys(both)
    assert len(keys) == 2
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "a.x509.pem").write_text(who.cert_pem)
    (folder / "b.crt").write_text(other.cert_pem)
    (folder / "README").write_text("not a certificate, not read")
    assert read_pem_keys(folder) == keys


def test_bad_cert_settings_name_the_file(tmp_path: Path) -> None:
    """Missing file, non-PEM file, a folder without certificates, `device` off Android."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, needle in (
        (tmp_path / "missing.pem", "cannot read"),
        (garbage, "not PEM certificates"),
        (empty, "no .pem or .crt files"),
    ):
        with pytest.raises(ConfigError, match=rf"^--ota-certs {path}: {needle}"):
            read_pem_keys(path)
    config = AgentConfig(server="http://x", api_key="k", platform="linux", ota_certs="device")
    with pytest.raises(ConfigError, match="--platform android"):
        config.check()
    assert image_trust(AgentConfig(), object()) is None  # not set: images are not checked


async def test_cli_bad_ota_certs_is_one_line(tmp_path: Path) -> None:
    """`run --ota-certs` with a missing file or a non-PEM file: exit 2, one line naming it,
    before anything is sent."""
    not_pem = tmp_path / "notes.pem"
    not_pem.write_text("hello\n")
    for path in (tmp_path / "missing.pem", not_pem):
        code, out, err = await agent_cli(
            "run", "--server", "http://127.0.0.1:9", "--api-key", "k", "--platform",
            "simulated", "--state-dir", str(tmp_path / "state"), "--ota-certs", str(path),
            "--once",
        )  # fmt: skip
        assert code == 2, err
        assert out == "" and err.count("\n") == 1, err
        assert err.startswith(f"midm-agent: error: --ota-certs {path}: "), err


def otacerts_zip(entries: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in entries.items():
            archive.writestr(name, text)
    return buffer.getvalue()


async def test_android_device_otacerts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--ota-certs device`: the device's otacerts.zip, pulled over adb, each *.x509.pem in it;
    a bad entry is a PlatformError naming it; a device without the file too."""
    who = signer("release")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    platform = AndroidPlatform(adb=str(FIXTURES / "adb" / "fake_adb.py"), device="R58N123ABC")
    with pytest.raises(PlatformError, match="does not exist"):
        await platform.ota_certificates()
    certs = tmp_path / "otacerts.zip"
    certs.write_bytes(otacerts_zip({"releasekey.x509.pem": who.cert_pem, "NOTICE": "x"}))
    monkeypatch.setenv("FAKE_ADB_OTACERTS", str(certs))
    keys = await platform.ota_certificates()
    assert keys == trusted_keys_of_pem(who.cert_pem.encode())
    assert "pull /system/etc/security/otacerts.zip" in (tmp_path / "adb.log").read_text()
    config = AgentConfig(server="http://x", api_key="k", platform="android", ota_certs="device")
    trust = image_trust(config.check(), platform)
    assert trust is not None and await trust.keys() == keys
    with pytest.raises(PlatformError, match=r"otacerts\.zip: bad\.x509\.pem is not a PEM"):
        parse_otacerts(otacerts_zip({"bad.x509.pem": "garbage"}))
    with pytest.raises(PlatformError, match="not a readable zip"):
        parse_otacerts(b"not a zip")


# -- the agent, end to end -------------------------------------------------------------------


def lenient_ota_worker(path: str) -> Parsed:
    """The upload parser of a server that does not check signatures (another MiDM, or one
    before §4's rule): it feeds a tampered package the agent must refuse by itself."""
    meta = read_ota_metadata(Path(path))
    return {
        "ab_update": meta.ab_update,
        "pre_devices": list(meta.pre_devices),
        "pre_build": meta.pre_build,
        "post_build": meta.post_build,
        "post_timestamp": meta.post_timestamp,
    }, ""


async def feed(admin: Client, content: bytes) -> str:
    reply = await admin.upload("/ota/api/ota/upload", content, "image.zip")
    assert reply.status == 200, reply.body
    image = str(reply.data["fileUuid"])
    await profile(admin, {"otas": [image]})
    return image


async def run_agent(
    server: Server, tmp_path: Path, certs: Path | None, store: ArtifactStore | None = None
) -> tuple[str, int]:
    """One `run --once` of an agent trusting `certs`; (its build after, its reboots). With a
    `store`, downloads are hashed as they stream, as in a simulated fleet."""
    platform = sim()
    agent, _ = make_agent(
        server.base,
        tmp_path / "state",
        platform=platform,
        ota_certs=str(certs or ""),
        artifacts=store,
    )
    await agent.run_once()
    return (await platform.build()).fingerprint, platform.reboots


def trust_file(tmp_path: Path, who: Signer) -> Path:
    path = tmp_path / "otacerts.pem"
    path.write_text(who.cert_pem)
    return path


async def test_agent_installs_an_image_signed_by_a_trusted_cert(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    who = signer("release")
    await feed(admin, sign_package(package(), who))
    build, reboots = await run_agent(server, tmp_path, trust_file(tmp_path, who))
    assert (build, reboots) == (FP2, 1)
    assert ("ota", "installed", "") in events(server, "ota")


@pytest.mark.parametrize("case", ["other-cert", "unsigned"])
async def test_agent_refuses_an_untrusted_image(
    server: Server, admin: Client, tmp_path: Path, case: str
) -> None:
    """Signed by another certificate, or not signed: failed/bad_signature, never installed."""
    content = sign_package(package(), signer("other")) if case == "other-cert" else package()
    await feed(admin, content)
    build, reboots = await run_agent(server, tmp_path, trust_file(tmp_path, signer("release")))
    assert (build, reboots) == (FP1, 0)
    ota = events(server, "ota")
    assert ("ota", "failed", "bad_signature") in ota
    assert not any(status in ("installing", "installed") for _, status, _ in ota), ota


def tampered() -> bytes:
    """A package changed after signing (a byte of payload.bin: the metadata still reads)."""
    content = bytearray(sign_package(package(b"firmware" * 64), signer("release")))
    content[payload_offset(bytes(content)) + 3] ^= 0x01
    return bytes(content)


def lenient(server: Server) -> None:
    """The server's upload parser stops checking signatures (see lenient_ota_worker)."""
    assert server.app is not None
    server.app[SERVICES].upload_parsers.workers = ParserWorkers(ota=lenient_ota_worker)


async def test_agent_refuses_a_tampered_image(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """A package changed after signing, fed by a server that does not check signatures: the
    agent's own verification refuses it."""
    lenient(server)
    await feed(admin, tampered())
    build, reboots = await run_agent(server, tmp_path, trust_file(tmp_path, signer("release")))
    assert (build, reboots) == (FP1, 0)
    assert ("ota", "failed", "bad_signature") in events(server, "ota")


async def test_without_ota_certs_images_are_not_checked(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """Without --ota-certs the agent installs as before: even the tampered package."""
    lenient(server)
    await feed(admin, tampered())
    assert await run_agent(server, tmp_path, None) == (FP2, 1)


@pytest.mark.parametrize("trusted", [True, False])
async def test_simulated_fleet_verifies_from_the_stored_copy(
    server: Server, admin: Client, tmp_path: Path, trusted: bool
) -> None:
    """A fleet's agent keeps no image bytes (a hashing sink); its image's signature is read
    from the store's copy of the content (the same sha256): trusted installs, other refuses."""
    await feed(admin, sign_package(package(), signer("release" if trusted else "other")))
    store = ArtifactStore(tmp_path / "store")
    certs = trust_file(tmp_path, signer("release"))
    build, reboots = await run_agent(server, tmp_path, certs, store)
    assert (build, reboots) == ((FP2, 1) if trusted else (FP1, 0))
    refused = ("ota", "failed", "bad_signature") in events(server, "ota")
    assert refused is not trusted
