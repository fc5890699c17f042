"""midm_common.apk_signature (issue 15, item 3): v3, v2 and v1 signatures verified, every
failure an ApkError naming the scheme; the committed fixtures agree with Debian's apksigner."""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from midm_common import apk_signature, apk_v1
from midm_common.apk import read_apk_metadata
from midm_common.apk_signature import Scheme, Verified, verify_apk
from midm_common.errors import ApkError
from tests.apksigning import (
    DSA_256,
    ECDSA_256,
    ECDSA_512,
    RELEASE_MD5,
    RSA_256,
    RSA_512,
    RSA_PSS_256,
    RSA_PSS_512,
    V2,
    V3,
    VALID,
    BlockSigner,
    base_entries,
    build_zip,
    identity,
    v1_sign,
    v2v3_sign,
)
from tests.helpers import APKS

# Each refused fixture: the reason and a needle of the message (apksigner refuses each too).
REFUSED = {
    "unsigned.apk": ("unsigned", "not signed"),
    "spoofed-v1cert.apk": (
        "bad_signature",
        "v1 JAR signature does not verify (the MANIFEST.MF digest of AndroidManifest.xml",
    ),
    "spoofed-v1block.apk": (
        "bad_signature",
        "v1 JAR signature does not verify (META-INF/OTHER.RSA: the signature over the .SF",
    ),
    "tampered-entry.apk": (
        "bad_signature",
        "APK Signature Scheme v3 signature does not verify (content digest mismatch)",
    ),
    "tampered-v1only.apk": (
        "bad_signature",
        "v1 JAR signature does not verify (the MANIFEST.MF digest of resources.arsc",
    ),
    "corrupt-v2block.apk": (
        "bad_signature",
        "APK Signature Scheme v2 signature does not verify (RSA PKCS#1 SHA-256 signature",
    ),
    "stripped-v2.apk": ("bad_signature", "X-Android-APK-Signed says a v2 block was made"),
    "v1only-target30.apk": ("bad_signature", "targetSdkVersion 30 needs APK Signature Scheme v2"),
    "corrupt-truncated.apk": ("bad_zip", "not a zip archive"),
    "not-a-zip.apk": ("bad_zip", "not a zip archive"),
}


def verify(path: Path, target_sdk: int | None = None) -> Verified:
    with path.open("rb") as handle:
        return verify_apk(handle, path.stat().st_size, archive=path.name, target_sdk=target_sdk)


def write(tmp_path: Path, content: bytes, name: str = "t.apk") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def refusal(path: Path, target_sdk: int | None = None) -> ApkError:
    with pytest.raises(ApkError) as caught:
        verify(path, target_sdk)
    assert path.name in str(caught.value)
    return caught.value


def test_every_fixture_is_in_the_table() -> None:
    """A fixture added later gets a verdict here (and so in the apksigner cross-check)."""
    assert sorted(VALID | REFUSED) == sorted(p.name for p in APKS.glob("*.apk"))


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_fixtures_verify(name: str) -> None:
    """Each signed fixture verifies with the schemes apksigner reports, and certMd5 is the MD5
    of the certificate apksigner prints (v3's, else v2's, else v1's)."""
    schemes, md5 = VALID[name]
    verified = verify(APKS / name)
    assert " ".join(verified.schemes) == schemes
    assert verified.cert_md5 == md5


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_fixtures_are_refused_naming_the_scheme(name: str) -> None:
    """Unsigned, spoofed (a copied CERT.RSA), tampered, corrupted, stripped or too-new v1-only
    APKs raise ApkError with a reason and a message naming the scheme and what failed."""
    reason, needle = REFUSED[name]
    error = refusal(APKS / name, target_sdk=30)
    assert error.reason == reason and needle in str(error), str(error)


def test_read_apk_metadata_verifies_only_when_asked() -> None:
    """The agent's reads (default) report what androguard sees, the spoofed certificate too;
    the server's (verify_signatures) refuse it and report the verified signer otherwise."""
    spoofed = APKS / "spoofed-v1cert.apk"
    assert read_apk_metadata(spoofed).cert_md5 == RELEASE_MD5  # the reproduction
    with pytest.raises(ApkError, match="v1 JAR signature does not verify"):
        read_apk_metadata(spoofed, verify_signatures=True)
    meta = read_apk_metadata(APKS / "v2v3-ec.apk", verify_signatures=True)
    assert meta.cert_md5 == VALID["v2v3-ec.apk"][1]
    with pytest.raises(ApkError, match="targetSdkVersion 30"):
        read_apk_metadata(APKS / "v1only-target30.apk", verify_signatures=True)


# --- v2/v3 blocks signed here ----------------------------------------------------------------


def signed(blocks: dict[int, list[BlockSigner]], v1: bool = False) -> bytes:
    entries = base_entries()
    if v1:
        entries = v1_sign(entries, identity("rsa", "v1"), apk_signed="2, 3")
    return v2v3_sign(build_zip(entries), blocks)


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        ("rsa", RSA_PSS_256),
        ("rsa", RSA_PSS_512),
        ("rsa", RSA_256),
        ("rsa", RSA_512),
        ("ec", ECDSA_256),
        ("ec", ECDSA_512),
        ("dsa", DSA_256),
    ],
)
@pytest.mark.parametrize("block_id", [V2, V3])
def test_each_algorithm_verifies(tmp_path: Path, kind: str, algorithm: int, block_id: int) -> None:
    """RSA-PSS, RSA PKCS#1, ECDSA (SHA-256/512) and DSA signers verify in v2 and v3 blocks."""
    who = identity(kind)
    verified = verify(write(tmp_path, signed({block_id: [BlockSigner(who, (algorithm,))]})))
    assert verified.cert_md5 == who.cert_md5
    assert verified.schemes == ((Scheme.V2,) if block_id == V2 else (Scheme.V3,))


def test_v3_sdk_range_is_reported(tmp_path: Path) -> None:
    """v3's min/max SDK fields are parsed and kept with the signer."""
    who = identity("rsa")
    verified = verify(write(tmp_path, signed({V3: [BlockSigner(who, min_sdk=28, max_sdk=33)]})))
    assert (verified.signers[0].min_sdk, verified.signers[0].max_sdk) == (28, 33)


@pytest.mark.parametrize(
    ("block_id", "signer", "needle"),
    [
        (V2, {"bad_digest": True}, "v2 signature does not verify (content digest mismatch)"),
        (V3, {"bad_digest": True}, "v3 signature does not verify (content digest mismatch)"),
        (V2, {"certificate": "other"}, "the certificate's public key is not the signer's"),
        (V3, {"signed_sdk": (21, 0x7FFFFFFF)}, "signed min/max SDK differ"),
        (V3, {"min_sdk": 30, "max_sdk": 28}, "min SDK 30 over max SDK 28"),
        (V2, {"digest_ids": (RSA_512,)}, "signature and digest algorithm lists differ"),
        (V2, {"algorithms": (), "unknown_ids": (0x0421, 0x0999)}, "IDs 0x0421, 0x0999"),
        (V2, {"algorithms": (ECDSA_256,)}, "ECDSA SHA-256 with a"),
        (V2, {"attributes": [(0xBEEFF00D, struct.pack("<I", 3))]}, "stripping protection"),
    ],
)
def test_broken_blocks_are_refused(
    tmp_path: Path, block_id: int, signer: dict[str, object], needle: str
) -> None:
    """A content digest of other bytes, a key that is not the certificate's, signed SDKs that
    differ, lists that differ, only unknown algorithms (named), an algorithm of another key
    type, or a v2 saying v3 existed: refused, naming the scheme."""
    fields = dict(signer)
    if fields.get("certificate") == "other":
        fields["certificate"] = identity("rsa", "other").cert_der
    content = signed({block_id: [BlockSigner(identity("rsa"), **fields)]})  # type: ignore[arg-type]
    error = refusal(write(tmp_path, content))
    scheme = "v2" if block_id == V2 else "v3"
    assert error.reason == "bad_signature"
    assert f"APK Signature Scheme {scheme} signature does not verify" in str(error)
    assert needle in str(error), str(error)


def test_unknown_algorithms_beside_a_known_one_are_skipped(tmp_path: Path) -> None:
    """Verity (0x0421) beside RSA: the RSA signature decides, as on Android."""
    who = identity("rsa")
    signer = BlockSigner(who, (RSA_256,), unknown_ids=(0x0421,), digest_ids=(0x0421, RSA_256))
    assert verify(write(tmp_path, signed({V2: [signer]}))).cert_md5 == who.cert_md5


def test_too_many_signers(tmp_path: Path) -> None:
    """More than MAX_SIGNERS signers in a block: refused before any is verified."""
    who = identity("rsa")
    content = signed({V2: [BlockSigner(who)] * (apk_signature.MAX_SIGNERS + 1)})
    assert "more than 10 signers" in str(refusal(write(tmp_path, content)))


def test_signing_block_over_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An APK Signing Block over MAX_SIGNING_BLOCK_BYTES is over_limit, naming the limit."""
    monkeypatch.setattr(apk_signature, "MAX_SIGNING_BLOCK_BYTES", 512)
    error = refusal(write(tmp_path, signed({V2: [BlockSigner(identity("rsa"))]})))
    assert error.reason == "over_limit" and "limit of 512 bytes" in str(error)


def test_certificate_preference_is_v3_then_v2_then_v1(tmp_path: Path) -> None:
    """Three keys, one per scheme: certMd5 is v3's; without v3, v2's; v1 alone, v1's."""
    v2_who, v3_who = identity("rsa", "v2"), identity("ec", "v3")
    both = {V3: [BlockSigner(v3_who, (ECDSA_256,))], V2: [BlockSigner(v2_who)]}
    three = verify(write(tmp_path, signed(both, v1=True)))
    assert three.schemes == (Scheme.V3, Scheme.V2, Scheme.V1)
    assert three.cert_md5 == v3_who.cert_md5
    two = v1_sign(base_entries(), identity("rsa", "v1"), apk_signed="2")
    content = v2v3_sign(build_zip(two), {V2: [BlockSigner(v2_who)]})
    assert verify(write(tmp_path, content)).cert_md5 == v2_who.cert_md5


def test_v1_claiming_v3_without_a_v3_block_is_refused(tmp_path: Path) -> None:
    """X-Android-APK-Signed: 2, 3 with only a v2 block: the v3 block was stripped."""
    content = signed({V2: [BlockSigner(identity("rsa"))]}, v1=True)
    assert "says a v3 block was made" in str(refusal(write(tmp_path, content)))


def test_second_end_record_in_the_comment_is_refused(tmp_path: Path) -> None:
    """A comment holding another end record (androguard's reader takes the last one, apksig
    the one whose comment runs to the end): refused, so both read the same archive."""
    content = bytearray((APKS / "basic-v1.apk").read_bytes())
    comment = b"PK\x05\x06" + bytes(18) + b"tail"  # its own comment length (0) is wrong
    struct.pack_into("<H", content, len(content) - 2, len(comment))
    error = refusal(write(tmp_path, bytes(content) + comment))
    assert error.reason == "bad_zip" and "second end of central directory" in str(error)


# --- v1 signed here --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "digest", "attributes"),
    [
        ("rsa", "sha1", False),
        ("rsa", "sha256", True),
        ("ec", "sha256", False),
        ("ec", "sha512", True),
    ],
)
def test_v1_signers_verify(tmp_path: Path, kind: str, digest: str, attributes: bool) -> None:
    """RSA and EC signature blocks, SHA-1/256/512 digests, with or without signed attributes
    (jarsigner's form): verified, certMd5 the signer's."""
    who = identity(kind, "v1")
    entries = v1_sign(base_entries(), who, digest=digest, signed_attributes=attributes)
    verified = verify(write(tmp_path, build_zip(entries)), target_sdk=29)
    assert verified.schemes == (Scheme.V1,) and verified.cert_md5 == who.cert_md5


def test_v1_per_section_digests_when_the_whole_manifest_digest_is_absent(tmp_path: Path) -> None:
    """A .SF without a whole-manifest digest is checked section by section."""
    entries = v1_sign(base_entries(), identity("rsa", "v1"), whole_manifest=False)
    assert verify(write(tmp_path, build_zip(entries))).schemes == (Scheme.V1,)


def _resigned_sf(entries: dict[str, bytes], change: tuple[bytes, bytes]) -> dict[str, bytes]:
    return {**entries, "META-INF/MANIFEST.MF": entries["META-INF/MANIFEST.MF"].replace(*change)}


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda e: {**e, "assets/added.txt": b"after signing"}, "assets/added.txt is not in"),
        (lambda e: {k: v for k, v in e.items() if k != "resources.arsc"}, "which the APK has not"),
        (lambda e: {**e, "resources.arsc": e["resources.arsc"] + b"x"}, "digest of resources"),
        (lambda e: {k: v for k, v in e.items() if k != "META-INF/CERT.RSA"}, "no signature block"),
        (
            lambda e: {**e, "META-INF/CERT.RSA": e["META-INF/CERT.RSA"][:-1] + b"\0"},
            "META-INF/CERT.RSA",
        ),
    ],
)
def test_v1_tampering_is_refused(tmp_path: Path, mutate: object, needle: str) -> None:
    """An entry added, removed or changed after signing, a missing or damaged signature
    block: refused, naming v1 and the entry."""
    entries = v1_sign(base_entries(), identity("rsa", "v1"))
    assert callable(mutate)
    error = refusal(write(tmp_path, build_zip(mutate(entries))))
    assert "v1 JAR signature does not verify" in str(error) and needle in str(error), str(error)


def test_v1_manifest_section_changed_is_refused(tmp_path: Path) -> None:
    """MANIFEST.MF edited (no whole digest in the .SF): the section digest no longer matches."""
    entries = v1_sign(base_entries(), identity("rsa", "v1"), whole_manifest=False)
    manifest = entries["META-INF/MANIFEST.MF"]
    name = b"Name: resources.arsc\r\n"
    entries["META-INF/MANIFEST.MF"] = manifest.replace(name, name + b"X-Extra: 1\r\n")
    error = refusal(write(tmp_path, build_zip(entries)))
    assert "section 'resources.arsc' does not match" in str(error)


def test_v1_signed_attributes_with_another_digest_are_refused() -> None:
    """Signed attributes whose message digest is not the .SF's: refused."""
    who = identity("rsa", "v1")
    entries = v1_sign(base_entries(), who, signed_attributes=True)
    with pytest.raises(apk_v1.V1Error, match=r"message digest is not the \.SF"):
        apk_v1.verify_block(entries["META-INF/CERT.RSA"], b"another .SF", "CERT.RSA")


def test_manifest_parser_joins_continuation_lines() -> None:
    """72-byte lines continue with a leading space; sections keep their bytes as written."""
    text = b"Manifest-Version: 1.0\r\n\r\nName: a/very/long/na\r\n me.txt\r\nSHA1-Digest: x\r\n\r\n"
    main, sections = apk_v1.parse_manifest(text, "MANIFEST.MF")
    assert main.attrs == {"MANIFEST-VERSION": "1.0"}
    assert list(sections) == ["a/very/long/name.txt"]
    assert sections["a/very/long/name.txt"].raw == text[len(b"Manifest-Version: 1.0\r\n\r\n") :]


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """An 8 MiB stored entry signed v1+v2+v3 verifies with under 4 MiB of Python allocations:
    the file is streamed in 1 MiB chunks, never held."""
    entries = {**base_entries(), "assets/big.bin": bytes(range(256)) * (8 << 12)}
    entries = v1_sign(entries, identity("rsa", "v1"), apk_signed="2, 3")
    archive = build_zip(entries, stored=("assets/big.bin",))
    who = identity("rsa")
    path = write(tmp_path, v2v3_sign(archive, {V3: [BlockSigner(who)], V2: [BlockSigner(who)]}))
    del entries, archive
    tracemalloc.start()
    try:
        verified = verify(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verified.schemes == (Scheme.V3, Scheme.V2, Scheme.V1)
    assert peak < 4 << 20, peak


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(at=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused_or_harmless(at: int, bit: int) -> None:
    """Flip one bit anywhere in a v1+v2+v3 APK: it raises ApkError (nothing else), or it still
    verifies with the same certificate (a bit in an unsigned part, the block's padding)."""
    content = bytearray((APKS / "basic-v1.apk").read_bytes())
    content[at % len(content)] ^= 1 << bit
    try:
        verified = verify_apk(io.BytesIO(bytes(content)), len(content), archive="f.apk")
    except ApkError:
        return
    assert verified.cert_md5 == RELEASE_MD5


# --- Cross-check with apksigner --------------------------------------------------------------

APKSIGNER = shutil.which("apksigner")


@pytest.mark.skipif(APKSIGNER is None, reason="apksigner (Debian package) is not installed")
@pytest.mark.parametrize("name", sorted(p.name for p in APKS.glob("*.apk")))
def test_apksigner_agrees(name: str) -> None:
    """`apksigner verify -v --print-certs` reaches our verdict on every committed fixture: the
    same verified schemes and certificate MD5 for a valid one, DOES NOT VERIFY (or an error)
    for a refused one."""
    assert APKSIGNER is not None
    run = subprocess.run(
        [APKSIGNER, "verify", "-v", "--print-certs", str(APKS / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    path = APKS / name
    try:
        ours: Verified | None = verify(path, target_sdk=_target_sdk(name))
    except ApkError:
        ours = None
    if ours is None:
        assert run.returncode != 0 or "DOES NOT VERIFY" in run.stdout, run.stdout
        return
    assert run.returncode == 0 and run.stdout.startswith("Verifies"), run.stdout + run.stderr
    theirs = {
        m.group(1) for m in re.finditer(r"^Verified using (v\d) scheme .*: true$", run.stdout, re.M)
    }
    assert theirs == {str(s) for s in ours.schemes}
    (md5,) = re.findall(r"^Signer #1 certificate MD5 digest: (\w+)$", run.stdout, re.M)
    assert md5 == ours.cert_md5


def _target_sdk(name: str) -> int | None:
    try:
        target = read_apk_metadata(APKS / name).target_sdk_version
    except ApkError:
        return None
    return int(target) if target.isdigit() else None


def test_v1_local_header_sizes_must_match_the_central_directory(tmp_path: Path) -> None:
    """A local header announcing another size than the central directory (androguard reads by
    the local one, the digest by the central one): refused, naming the entry."""
    entries = v1_sign(base_entries(), identity("rsa", "v1"))
    content = bytearray(build_zip(entries, stored=("resources.arsc",)))
    with zipfile.ZipFile(io.BytesIO(bytes(content))) as archive:
        at = archive.getinfo("resources.arsc").header_offset
    struct.pack_into("<L", content, at + 22, 4)  # the inflated size: 4 bytes
    error = refusal(write(tmp_path, bytes(content)))
    assert "resources.arsc: its local header differs from the central directory" in str(error)
