"""Real, signed APKs built in Python: what the simulator uploads and installs.

An APK here is a zip with a binary AndroidManifest.xml (package, versionCode, versionName,
minSdk/targetSdk, a literal application label, `hasCode="false"`: no classes.dex needed), an
optional stored asset to give it weight, a v1 JAR signature (META-INF/MANIFEST.MF with SHA-256
digests, CERT.SF, CERT.RSA: detached PKCS#7 SignedData) and, by default, an APK Signature Scheme
v2 block (Android 11+ and `apksigner verify` refuse targetSdk >= 30 without it). Both schemes use
the same certificate, so the certMd5 readers report is `signer.cert_md5` whichever they prefer.
Output is a pure function of the arguments and the signer: fixed zip timestamps and attributes,
signatures without signing time (PKCS#1 v1.5 is deterministic).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs7

from simulator.gen import axml
from simulator.gen.archive import Entry, build_zip
from simulator.gen.signer import Signer, default_signer

ZIP_DATE = (2008, 1, 1, 0, 0, 0)  # what AOSP's reproducible builds stamp
_PACKAGE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")
_MAX_VERSION_CODE = 0x7FFFFFFF
_SIGNER_BASENAME = "META-INF/CERT"
_V2_BLOCK_ID = 0x7109871A
_RSA_PKCS1_SHA256 = 0x0103
_SIG_BLOCK_MAGIC = b"APK Sig Block 42"
_CHUNK = 1 << 20


def build_apk(
    *,
    package: str,
    version_code: int,
    version_name: str = "",
    label: str = "",
    min_sdk: int = 21,
    target_sdk: int = 33,
    signer: Signer | None = None,
    v2: bool = True,
    asset_size: int = 0,
) -> bytes:
    """The bytes of a signed APK; raise ValueError for values Android would not accept.

    An empty `version_name` or `label` leaves that attribute out (readers then report "" and
    the package name). `signer` defaults to `default_signer()`; `v2=False` makes a v1-only APK;
    `asset_size` adds `assets/blob.bin` of that many deterministic bytes (stored, aligned).
    """
    _check(package=package, version_code=version_code, min_sdk=min_sdk, target_sdk=target_sdk)
    if asset_size < 0:
        raise ValueError(f"asset_size: must be >= 0, not {asset_size}")
    if signer is None:
        signer = default_signer()
    manifest = manifest_xml(package, version_code, version_name, label, min_sdk, target_sdk)
    entries = [Entry("AndroidManifest.xml", manifest)]
    if asset_size:
        seed = f"{package}\x00{version_code}".encode()
        entries.append(
            Entry("assets/blob.bin", hashlib.shake_256(seed).digest(asset_size), stored=True)
        )
    archive = build_zip(_v1_signature(entries, signer, v2=v2) + entries, date_time=ZIP_DATE)
    return _with_v2_block(archive, signer) if v2 else archive


def manifest_xml(
    package: str, version_code: int, version_name: str, label: str, min_sdk: int, target_sdk: int
) -> bytes:
    """The binary AndroidManifest.xml of a code-less app."""
    manifest: dict[str, axml.Value] = {"android:versionCode": version_code, "package": package}
    if version_name:
        manifest["android:versionName"] = version_name
    application: dict[str, axml.Value] = {"android:hasCode": False}
    if label:
        application["android:label"] = label
    sdk = {"android:minSdkVersion": min_sdk, "android:targetSdkVersion": target_sdk}
    return axml.encode(
        axml.Element(
            name="manifest",
            attributes=manifest,
            children=(
                axml.Element(name="uses-sdk", attributes=dict(sdk)),
                axml.Element(name="application", attributes=application),
            ),
        )
    )


def _check(*, package: str, version_code: int, min_sdk: int, target_sdk: int) -> None:
    if not _PACKAGE.match(package):
        raise ValueError(
            f"package: {package!r} is not an application id (two or more dot-separated"
            " names, each a letter then letters, digits or _)"
        )
    if not 0 <= version_code <= _MAX_VERSION_CODE:
        raise ValueError(f"version_code: must be 0..{_MAX_VERSION_CODE}, not {version_code}")
    if min_sdk < 1 or target_sdk < 1:
        raise ValueError(f"min_sdk/target_sdk: must be >= 1, not {min_sdk}/{target_sdk}")


# --- v1 (JAR) signature ---------------------------------------------------------------------


def _v1_signature(entries: list[Entry], signer: Signer, *, v2: bool) -> list[Entry]:
    """META-INF/MANIFEST.MF, CERT.SF and CERT.RSA for `entries` (jarsigner's layout)."""
    main = _section({"Manifest-Version": "1.0", "Created-By": "1.0 (midm-sim)"})
    entries = sorted(entries, key=lambda e: e.name)
    sections = [_section({"Name": e.name, "SHA-256-Digest": _b64_sha256(e.data)}) for e in entries]
    manifest = main + b"".join(sections)
    sf_main: dict[str, str] = {
        "Signature-Version": "1.0",
        "Created-By": "1.0 (midm-sim)",
        "SHA-256-Digest-Manifest": _b64_sha256(manifest),
        "SHA-256-Digest-Manifest-Main-Attributes": _b64_sha256(main),
    }
    if v2:  # stripping protection: a verifier then insists on the v2 block
        sf_main["X-Android-APK-Signed"] = "2"
    signature_file = _section(sf_main) + b"".join(
        _section({"Name": e.name, "SHA-256-Digest": _b64_sha256(section)})
        for e, section in zip(entries, sections, strict=True)
    )
    block = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(signature_file)
        .add_signer(signer.certificate, signer.key, hashes.SHA256())
        .sign(
            serialization.Encoding.DER,
            [
                pkcs7.PKCS7Options.DetachedSignature,
                pkcs7.PKCS7Options.Binary,
                pkcs7.PKCS7Options.NoAttributes,
            ],
        )
    )
    return [
        Entry("META-INF/MANIFEST.MF", manifest),
        Entry(f"{_SIGNER_BASENAME}.SF", signature_file),
        Entry(f"{_SIGNER_BASENAME}.RSA", block),
    ]


def _section(attributes: dict[str, str]) -> bytes:
    """A manifest section: `Key: value` lines of at most 72 bytes (continuations start with a
    space), CRLF line ends, then a blank line."""
    out = bytearray()
    for key, value in attributes.items():
        line = f"{key}: {value}".encode()
        out += line[:72] + b"\r\n"
        for start in range(72, len(line), 71):
            out += b" " + line[start : start + 71] + b"\r\n"
    return bytes(out) + b"\r\n"


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# --- v2 (APK Signature Scheme v2) -------------------------------------------------------------


def _with_v2_block(archive: bytes, signer: Signer) -> bytes:
    """Insert an APK Signing Block with a v2 signer before the central directory.

    The digest covers the entries, the central directory and the end-of-central-directory
    record (whose CD offset, during digesting, is the block's offset: the CD's old offset)."""
    eocd_at = len(archive) - 22  # zipfile wrote no archive comment
    if archive[eocd_at : eocd_at + 4] != b"PK\x05\x06":  # pragma: no cover - zipfile's layout
        raise AssertionError("end of central directory not where expected")
    (cd_at,) = struct.unpack_from("<I", archive, eocd_at + 16)
    sections = (archive[:cd_at], archive[cd_at:eocd_at], archive[eocd_at:])
    digest = _chunked_sha256(sections)
    signed_data = (
        _lp(_lp(struct.pack("<I", _RSA_PKCS1_SHA256) + _lp(digest)))
        + _lp(_lp(signer.cert_der))
        + _lp(b"")  # no additional attributes
    )
    signature = signer.key.sign(signed_data, padding.PKCS1v15(), hashes.SHA256())
    v2_signer = (
        _lp(signed_data)
        + _lp(_lp(struct.pack("<I", _RSA_PKCS1_SHA256) + _lp(signature)))
        + _lp(signer.public_key_der)
    )
    value = _lp(_lp(v2_signer))
    pair = struct.pack("<QI", 4 + len(value), _V2_BLOCK_ID) + value
    size = len(pair) + 8 + len(_SIG_BLOCK_MAGIC)
    block = struct.pack("<Q", size) + pair + struct.pack("<Q", size) + _SIG_BLOCK_MAGIC
    eocd = bytearray(sections[2])
    struct.pack_into("<I", eocd, 16, cd_at + len(block))
    return sections[0] + block + sections[1] + bytes(eocd)


def _chunked_sha256(sections: tuple[bytes, ...]) -> bytes:
    chunks = [
        hashlib.sha256(b"\xa5" + struct.pack("<I", len(piece)) + piece).digest()
        for section in sections
        for piece in (section[i : i + _CHUNK] for i in range(0, len(section), _CHUNK))
    ]
    return hashlib.sha256(b"\x5a" + struct.pack("<I", len(chunks)) + b"".join(chunks)).digest()


def _lp(data: bytes) -> bytes:
    """uint32 little-endian length prefix."""
    return struct.pack("<I", len(data)) + data
