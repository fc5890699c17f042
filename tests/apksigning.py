"""Test APKs signed here with `cryptography`: v1 (JAR) and v2/v3 blocks, each part adjustable
so a test can break exactly one thing. Written from Android's format description, apart from
midm_common.apk_signature (what it tests); apksigner cross-checks both on the committed fixtures.
Nothing here is secret: throwaway test keys."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from tests.certs import private_key, self_signed
from tests.helpers import APKS

V2, V3 = 0x7109871A, 0xF05368C0
RSA_PSS_256, RSA_PSS_512, RSA_256, RSA_512 = 0x0101, 0x0102, 0x0103, 0x0104
ECDSA_256, ECDSA_512, DSA_256 = 0x0201, 0x0202, 0x0301
# The committed fixtures that verify: the schemes (apksigner's "Verified using ... true" lines)
# and the MD5 of the certificate apksigner prints ("Signer #1 certificate MD5 digest").
RELEASE_MD5 = "ac62580a4cad17f9e9531c11eceb28d5"  # the "release" key of the first fixtures
VALID = {
    "basic-v1.apk": ("v3 v2 v1", RELEASE_MD5),
    "basic-v1-conflict.apk": ("v3 v2 v1", RELEASE_MD5),
    "basic-v2.apk": ("v3 v2 v1", RELEASE_MD5),
    "basic-v2-othercert.apk": ("v3 v2 v1", "a16ec65f74a05496711375b6ab88708c"),
    "maxsdk.apk": ("v3 v2 v1", RELEASE_MD5),
    "nolabel.apk": ("v3 v2 v1", RELEASE_MD5),
    "nosdk.apk": ("v3 v2 v1", RELEASE_MD5),
    "noversion.apk": ("v3 v2 v1", "a83f8c65ee60de4a91dbfda843155100"),
    "v1only.apk": ("v1", RELEASE_MD5),
    "v2v3-ec.apk": ("v3 v2", "0125074f75b27ef2de32382f31726811"),
}
_HASH: dict[int, type[hashes.SHA256 | hashes.SHA512]] = {
    RSA_PSS_256: hashes.SHA256, RSA_PSS_512: hashes.SHA512, RSA_256: hashes.SHA256,
    RSA_512: hashes.SHA512, ECDSA_256: hashes.SHA256, ECDSA_512: hashes.SHA512,
    DSA_256: hashes.SHA256,
}  # fmt: skip


@dataclass(frozen=True)
class Identity:
    key: Any
    cert_der: bytes

    @property
    def cert_md5(self) -> str:
        return hashlib.md5(self.cert_der, usedforsecurity=False).hexdigest()

    @property
    def public_der(self) -> bytes:
        return bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@functools.cache
def identity(kind: str, name: str = "test") -> Identity:
    """A key of `kind` (rsa, ec, dsa) and its self-signed certificate (cached per process)."""
    key = private_key(kind)
    cert = self_signed(key, f"{name} {kind}", days=36500)
    return Identity(key=key, cert_der=cert.public_bytes(serialization.Encoding.DER))


def base_entries() -> dict[str, bytes]:
    """The manifest and resource table of a committed fixture (targetSdk 30, minSdk 21)."""
    with zipfile.ZipFile(APKS / "unsigned.apk") as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def build_zip(entries: dict[str, bytes], stored: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            method = zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED
            archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data, method)
    return buffer.getvalue()


def _b64(algorithm: str, data: bytes) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def v1_sign(
    entries: dict[str, bytes],
    who: Identity,
    *,
    digest: str = "sha256",
    apk_signed: str | None = None,
    signed_attributes: bool = False,
    name: str = "CERT",
    whole_manifest: bool = True,
    stored: tuple[str, ...] = (),
) -> dict[str, bytes]:
    """`entries` plus MANIFEST.MF, <name>.SF and <name>.RSA/.EC/.DSA signed by `who`."""
    label = {"sha1": "SHA1", "sha256": "SHA-256", "sha512": "SHA-512"}[digest]
    sections = [
        f"Name: {n}\r\n{label}-Digest: {_b64(digest, d)}\r\n\r\n".encode()
        for n, d in entries.items()
    ]
    manifest = b"Manifest-Version: 1.0\r\nCreated-By: midm tests\r\n\r\n" + b"".join(sections)
    sf = b"Signature-Version: 1.0\r\n"
    if whole_manifest:
        sf += f"{label}-Digest-Manifest: {_b64(digest, manifest)}\r\n".encode()
    if apk_signed is not None:
        sf += f"X-Android-APK-Signed: {apk_signed}\r\n".encode()
    sf += b"\r\n"
    for n, section in zip(entries, sections, strict=True):
        sf += f"Name: {n}\r\n{label}-Digest: {_b64(digest, section)}\r\n\r\n".encode()
    options = [pkcs7.PKCS7Options.DetachedSignature]
    if not signed_attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    cert = x509.load_der_x509_certificate(who.cert_der)
    # cryptography signs PKCS#7 with SHA-2 only: SHA-1 manifests get a SHA-256 block (v1only.apk,
    # signed by apksigner, has an all-SHA-1 one)
    algorithm: hashes.SHA256 | hashes.SHA512 = (
        hashes.SHA512() if digest == "sha512" else hashes.SHA256()
    )
    block = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(sf)
        .add_signer(cert, who.key, algorithm)
        .sign(serialization.Encoding.DER, options)
    )
    suffix = ".EC" if isinstance(who.key, ec.EllipticCurvePrivateKey) else ".RSA"
    return {
        **entries,
        "META-INF/MANIFEST.MF": manifest,
        f"META-INF/{name}.SF": sf,
        f"META-INF/{name}{suffix}": block,
    }


@dataclass
class BlockSigner:
    """One v2/v3 signer; the fields after `algorithms` break one thing each when set."""

    who: Identity
    algorithms: tuple[int, ...] = (RSA_256,)
    min_sdk: int = 24
    max_sdk: int = 0x7FFFFFFF
    signed_sdk: tuple[int, int] | None = None  # v3: the signed-data copy, if different
    certificate: bytes | None = None  # another certificate than the key's
    digest_ids: tuple[int, ...] | None = None  # digests listed under other IDs
    bad_digest: bool = False  # the content digest of another file
    unknown_ids: tuple[int, ...] = ()  # extra signatures with these (unknown) IDs, first
    attributes: list[tuple[int, bytes]] = field(default_factory=list)


def _lp(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _seq(items: list[bytes]) -> bytes:
    return _lp(b"".join(_lp(i) for i in items))


def _sign(key: Any, algorithm: int, data: bytes) -> bytes:
    digest = _HASH[algorithm]()
    if isinstance(key, rsa.RSAPrivateKey):
        if algorithm in (RSA_PSS_256, RSA_PSS_512):
            salt = digest.digest_size
            return bytes(key.sign(data, padding.PSS(padding.MGF1(digest), salt), digest))
        return bytes(key.sign(data, padding.PKCS1v15(), digest))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return bytes(key.sign(data, ec.ECDSA(digest)))
    return bytes(key.sign(data, digest))


def content_digest(archive: bytes, algorithm: str) -> bytes:
    """Android's chunked digest of an unsigned zip, as if a block were put before its CD."""
    cd = struct.unpack_from("<I", archive, len(archive) - 22 + 16)[0]
    eocd_at = archive.rindex(b"PK\x05\x06")
    sections = (archive[:cd], archive[cd:eocd_at], archive[eocd_at:])
    chunks = [s[i : i + (1 << 20)] for s in sections for i in range(0, len(s), 1 << 20)]
    digests = [
        hashlib.new(algorithm, b"\xa5" + struct.pack("<I", len(c)) + c).digest() for c in chunks
    ]
    top = b"\x5a" + struct.pack("<I", len(digests)) + b"".join(digests)
    return hashlib.new(algorithm, top).digest()


def _signer(archive: bytes, signer: BlockSigner, block_id: int) -> bytes:
    digests = []
    for algorithm in signer.digest_ids or signer.algorithms:
        name = "sha512" if _HASH.get(algorithm, hashes.SHA256) is hashes.SHA512 else "sha256"
        value = content_digest(archive + (b"x" if signer.bad_digest else b""), name)
        digests.append(struct.pack("<I", algorithm) + _lp(value))
    attributes = [struct.pack("<I", i) + v for i, v in signer.attributes]
    sdk = b""
    if block_id != V2:
        signed_min, signed_max = signer.signed_sdk or (signer.min_sdk, signer.max_sdk)
        sdk = struct.pack("<II", signed_min, signed_max)
    certificate = signer.certificate or signer.who.cert_der
    signed = _seq(digests) + _seq([certificate]) + sdk + _seq(attributes)
    signatures = [struct.pack("<I", i) + _lp(b"\0" * 64) for i in signer.unknown_ids]
    signatures += [
        struct.pack("<I", a) + _lp(_sign(signer.who.key, a, signed)) for a in signer.algorithms
    ]
    outer = struct.pack("<II", signer.min_sdk, signer.max_sdk) if block_id != V2 else b""
    return _lp(signed) + outer + _seq(signatures) + _lp(signer.who.public_der)


def v2v3_sign(archive: bytes, blocks: dict[int, list[BlockSigner]]) -> bytes:
    """`archive` (a zip) with an APK Signing Block holding `blocks` (ID -> signers)."""
    pairs = b""
    for block_id, signers in blocks.items():
        value = _seq([_signer(archive, s, block_id) for s in signers])
        pairs += struct.pack("<QI", len(value) + 4, block_id) + value
    size = len(pairs) + 8 + 16
    block = struct.pack("<Q", size) + pairs + struct.pack("<Q", size) + b"APK Sig Block 42"
    cd = struct.unpack_from("<I", archive, len(archive) - 22 + 16)[0]
    signed = bytearray(archive[:cd] + block + archive[cd:])
    struct.pack_into("<I", signed, len(signed) - 22 + 16, cd + len(block))
    return bytes(signed)
