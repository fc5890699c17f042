"""Verify an APK's signatures: APK Signature Scheme v3 and v2 blocks and the v1 JAR signature.

`verify_apk(f, size, archive=...)` returns the verified signers, or raises ApkError naming the
scheme and what failed ("APK Signature Scheme v2 signature does not verify (content digest
mismatch)"). Only `cryptography` is used; the format is Android's ("APK Signature Scheme v2/v3",
source.android.com; apksig's ApkSigningBlockUtils, V2/V3SchemeVerifier, V1SchemeVerifier).

Theory of operation (memory stays bounded whatever the file: nothing but the signing block,
MANIFEST.MF, the .SF and the signature block files is held, each within a named limit):
- Zip sections: the end of central directory record (EOCD) is found as apksig finds it (from the
  end, the first whose comment runs exactly to the end of the file); it must be the last
  "PK\\5\\6" of the file (what androguard's zip reader takes), not zip64, with the central
  directory (CD) right before it. Otherwise the file is refused: two readers must not see two
  different archives.
- The APK Signing Block sits right before the CD ("APK Sig Block 42"); its ID-value pairs hold
  the v2 (0x7109871a), v3 (0xf05368c0) and v3.1 (0x1b93ad61) blocks; others are ignored.
- v2/v3: per signer, every signature whose algorithm is known is verified over the signed data
  with the signer's public key, which must be the first certificate's key; the signature and
  digest algorithm lists must be equal; v3's min/max SDK inside and outside the signed data must
  agree. Then one streamed pass computes the content digests (1 MiB chunks of the entries, the
  CD, and the EOCD with its CD offset set to the signing block's, SHA-256 and/or SHA-512) and
  every signer's digest must match.
- v1 (midm_common.apk_v1): present when META-INF holds a .SF file; verified whether or not a
  v2/v3 block exists (stricter than Android 7+, which ignores v1 beside v2: an APK whose v1
  signature is broken is a broken build or a forgery either way).
- Stripping protection: a .SF whose `X-Android-APK-Signed` names scheme 2 or 3 without that block,
  or a v2 signer whose stripping-protection attribute names v3 without a v3 block, is refused.

Decisions [ours, as a careful backend; the protocol is silent]:
- Unsigned (no v1, no v2/v3): refused, reason "unsigned" (Android refuses to install it).
- Signed with v1 only while targetSdkVersion >= 30: refused, as apksigner and Android 11+ do.
- Known algorithms: RSA-PSS and RSA PKCS#1 v1.5 with SHA-256/512 (0x0101-0x0104), ECDSA
  (0x0201, 0x0202), DSA (0x0301): what apksigner produces. The verity variants (0x0421, 0x0423,
  0x0425) are skipped beside a known one; a signer with none known is refused, naming the IDs.
- The certificate behind certMd5: v3's first signer, else v2's, else v1's (android-notes.md, and
  androguard's order, so that an agent's inventory reports the same value).
- Not verified: v3's proof-of-rotation lineage, source stamps, v4 (.idsig, a separate file).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa

from midm_common import apk_v1
from midm_common.errors import ApkError
from midm_common.zipguard import DEFAULT_LIMITS, ZipLimits

# --- Limits: each bounds memory or work on a hostile file; real APKs stay far below -----------
MAX_SIGNING_BLOCK_BYTES = 16 << 20  # APK Signing Block read into memory: real ones are a few KiB
# (certificates, signatures, a 4 KiB verity padding); apksig sets no lower bound of its own
MAX_SIGNERS = 10  # signers of a v2/v3 block: Android's own verifier refuses more (MAX_V2_SIGNERS)
MAX_SIGNATURES = 16  # signatures (one per algorithm) of one signer: Android knows 10 algorithm IDs
MAX_CERTIFICATES = 16  # certificates of one v2/v3 signer (the first is the signer's; a chain)
CHUNK_BYTES = 1 << 20  # v2/v3 content digest chunk: fixed by the format (1 MiB)

EOCD_MIN = 22
EOCD_MAGIC = b"PK\x05\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
BLOCK_MAGIC = b"APK Sig Block 42"
V2_ID, V3_ID, V31_ID = 0x7109871A, 0xF05368C0, 0x1B93AD61
STRIPPING_PROTECTION_ATTR = 0xBEEFF00D  # v2 signed-data attribute: "a v3 block was also made"


class Scheme(StrEnum):
    V1 = "v1"
    V2 = "v2"
    V3 = "v3"
    V31 = "v3.1"


SCHEME_NAMES = {
    Scheme.V1: "v1 JAR signature",
    Scheme.V2: "APK Signature Scheme v2 signature",
    Scheme.V3: "APK Signature Scheme v3 signature",
    Scheme.V31: "APK Signature Scheme v3.1 signature",
}
BLOCK_SCHEMES = {V2_ID: Scheme.V2, V3_ID: Scheme.V3, V31_ID: Scheme.V31}


class SignatureError(Exception):
    """One scheme's signature does not verify; `why` is the short parenthesised reason."""

    def __init__(self, scheme: Scheme, why: str) -> None:
        super().__init__(why)
        self.scheme = scheme
        self.why = why


@dataclass(frozen=True, slots=True, kw_only=True)
class Algorithm:
    name: str
    hash: Callable[[], hashes.HashAlgorithm]
    digest: str  # hashlib name of the content digest
    key: type  # the public key class it needs
    pss_salt: int = 0  # RSA-PSS salt length; 0: PKCS#1 v1.5 (RSA) or not RSA


ALGORITHMS: dict[int, Algorithm] = {
    0x0101: Algorithm(
        name="RSA-PSS SHA-256",
        hash=hashes.SHA256,
        digest="sha256",
        key=rsa.RSAPublicKey,
        pss_salt=32,
    ),
    0x0102: Algorithm(
        name="RSA-PSS SHA-512",
        hash=hashes.SHA512,
        digest="sha512",
        key=rsa.RSAPublicKey,
        pss_salt=64,
    ),
    0x0103: Algorithm(
        name="RSA PKCS#1 SHA-256", hash=hashes.SHA256, digest="sha256", key=rsa.RSAPublicKey
    ),
    0x0104: Algorithm(
        name="RSA PKCS#1 SHA-512", hash=hashes.SHA512, digest="sha512", key=rsa.RSAPublicKey
    ),
    0x0201: Algorithm(
        name="ECDSA SHA-256", hash=hashes.SHA256, digest="sha256", key=ec.EllipticCurvePublicKey
    ),
    0x0202: Algorithm(
        name="ECDSA SHA-512", hash=hashes.SHA512, digest="sha512", key=ec.EllipticCurvePublicKey
    ),
    0x0301: Algorithm(
        name="DSA SHA-256", hash=hashes.SHA256, digest="sha256", key=dsa.DSAPublicKey
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    """One verified signer: its scheme, certificate (DER, as written) and, for v3, SDK range."""

    scheme: Scheme
    certificate: bytes
    min_sdk: int | None = None
    max_sdk: int | None = None

    @property
    def cert_md5(self) -> str:
        return hashlib.md5(self.certificate, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """What verified: every scheme present, its signers in file order."""

    signers: tuple[Signer, ...]

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        return tuple(dict.fromkeys(s.scheme for s in self.signers))

    @property
    def certificate(self) -> bytes:
        """The certificate behind certMd5: v3's first signer, else v2's, else v1's."""
        for scheme in (Scheme.V3, Scheme.V2, Scheme.V1):
            for signer in self.signers:
                if signer.scheme == scheme:
                    return signer.certificate
        return b""  # unreachable: verify_apk refuses an APK with no signer

    @property
    def cert_md5(self) -> str:
        return hashlib.md5(self.certificate, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ZipSections:
    """Where the central directory and the end record are, and the signing block if any."""

    size: int
    cd_offset: int
    cd_size: int
    eocd_offset: int
    eocd: bytes  # the end record and its comment
    block_offset: int | None  # start of the APK Signing Block, if one is present


def _bad_zip(archive: str, what: str) -> ApkError:
    return ApkError(f"{archive}: not a zip archive or truncated ({what})", reason="bad_zip")


def find_sections(f: BinaryIO, size: int, archive: str) -> ZipSections:
    """The zip's sections, refused when two readers could see two different archives."""
    tail_len = min(size, EOCD_MIN + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = -1
    for candidate in range(tail_len - EOCD_MIN, -1, -1):
        if tail[candidate : candidate + 4] == EOCD_MAGIC:
            (comment,) = struct.unpack_from("<H", tail, candidate + 20)
            if candidate + EOCD_MIN + comment == tail_len:
                at = candidate
                break
    if at < 0:
        raise _bad_zip(archive, "no end of central directory record")
    if tail.rfind(EOCD_MAGIC) != at:
        raise _bad_zip(archive, "a second end of central directory record in the comment")
    eocd_offset = size - tail_len + at
    (disk, cd_disk, _here, _total, cd_size, cd_offset) = struct.unpack_from("<4H2L", tail, at + 4)
    if eocd_offset >= 20:
        f.seek(eocd_offset - 20)
        if f.read(4) == ZIP64_LOCATOR:
            raise _bad_zip(archive, "zip64 archives are not APKs Android installs")
    if disk or cd_disk:
        raise _bad_zip(archive, "a multi-disk archive")
    if cd_offset + cd_size != eocd_offset:
        raise _bad_zip(archive, "the central directory is not right before its end record")
    block_offset = None
    if cd_offset >= 32:
        f.seek(cd_offset - 24)
        footer = f.read(24)
        if footer[8:] == BLOCK_MAGIC:
            (declared,) = struct.unpack_from("<Q", footer)
            if declared < 24 or declared + 8 > cd_offset:
                raise _block_error(archive, "its size is out of the file")
            block_offset = cd_offset - declared - 8
    return ZipSections(
        size=size,
        cd_offset=cd_offset,
        cd_size=cd_size,
        eocd_offset=eocd_offset,
        eocd=tail[at:],
        block_offset=block_offset,
    )


def _block_error(archive: str, what: str) -> ApkError:
    return ApkError(
        f"{archive}: APK Signature Scheme v2 signature does not verify (the APK Signing Block: "
        f"{what})",
        reason="bad_signature",
    )


def signing_block_pairs(f: BinaryIO, sections: ZipSections, archive: str) -> dict[int, bytes]:
    """The v2/v3/v3.1 values of the APK Signing Block (other IDs are skipped)."""
    if sections.block_offset is None:
        return {}
    total = sections.cd_offset - sections.block_offset
    if total > MAX_SIGNING_BLOCK_BYTES:
        raise ApkError(
            f"{archive}: the APK Signing Block is {total} bytes, over the limit of "
            f"{MAX_SIGNING_BLOCK_BYTES} bytes",
            reason="over_limit",
        )
    f.seek(sections.block_offset)
    block = f.read(total)
    if len(block) != total or struct.unpack_from("<Q", block)[0] != total - 8:
        raise _block_error(archive, "its two size fields differ")
    pairs: dict[int, bytes] = {}
    at, end = 8, total - 24
    while at < end:
        if at + 12 > end:
            raise _block_error(archive, "a pair cut short")
        (length, pair_id) = struct.unpack_from("<QI", block, at)
        if length < 4 or at + 8 + length > end:
            raise _block_error(archive, "a pair longer than the block")
        if pair_id in BLOCK_SCHEMES:
            if pair_id in pairs:
                raise _block_error(archive, f"two blocks of ID 0x{pair_id:08x}")
            pairs[pair_id] = block[at + 12 : at + 8 + length]
        at += 8 + length
    return pairs


class _Reader:
    """Length-prefixed (uint32 LE) fields of a v2/v3 block, every read within its buffer."""

    def __init__(self, data: bytes, scheme: Scheme) -> None:
        self.data, self.at, self.scheme = data, 0, scheme

    def left(self) -> int:
        return len(self.data) - self.at

    def u32(self) -> int:
        if self.left() < 4:
            raise SignatureError(self.scheme, "a field cut short")
        (value,) = struct.unpack_from("<I", self.data, self.at)
        self.at += 4
        return int(value)

    def prefixed(self) -> bytes:
        length = self.u32()
        if length > self.left():
            raise SignatureError(self.scheme, "a length past its container")
        value = self.data[self.at : self.at + length]
        self.at += length
        return value

    def sequence(self, limit: int, what: str) -> list[bytes]:
        items = _Reader(self.prefixed(), self.scheme)
        found: list[bytes] = []
        while items.left():
            if len(found) == limit:
                raise SignatureError(self.scheme, f"more than {limit} {what}")
            found.append(items.prefixed())
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class _BlockSigner:
    signer: Signer
    digests: dict[int, bytes]  # content digest by (known) algorithm ID
    strips_v3: bool  # v2 only: the stripping-protection attribute names v3


def verify_signature(
    key: object, algorithm: Algorithm, signature: bytes, data: bytes, scheme: Scheme
) -> None:
    """Raise SignatureError unless `signature` is `algorithm` over `data` by `key`."""
    if not isinstance(key, algorithm.key):
        raise SignatureError(scheme, f"{algorithm.name} with a {type(key).__name__}")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if algorithm.pss_salt:
                pad = padding.PSS(
                    mgf=padding.MGF1(algorithm.hash()), salt_length=algorithm.pss_salt
                )
            key.verify(signature, data, pad, algorithm.hash())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm.hash()))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, data, algorithm.hash())
    except InvalidSignature:
        raise SignatureError(scheme, f"{algorithm.name} signature over the signed data") from None


def _public_der(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | dsa.DSAPublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _block_signer(raw: bytes, scheme: Scheme) -> _BlockSigner:
    signer = _Reader(raw, scheme)
    signed_data = signer.prefixed()
    outer_sdk = (signer.u32(), signer.u32()) if scheme != Scheme.V2 else None
    signatures = [_Reader(s, scheme) for s in signer.sequence(MAX_SIGNATURES, "signatures")]
    public_key_der = signer.prefixed()
    pairs = [(s.u32(), s.prefixed()) for s in signatures]
    known = [(ALGORITHMS[a], sig) for a, sig in pairs if a in ALGORITHMS]
    if not known:
        ids = ", ".join(f"0x{a:04x}" for a, _ in pairs) or "none"
        raise SignatureError(scheme, f"no supported signature algorithm (IDs {ids})")
    try:
        key = serialization.load_der_public_key(public_key_der)
    except ValueError:
        raise SignatureError(scheme, "unreadable public key") from None
    for algorithm, signature in known:
        verify_signature(key, algorithm, signature, signed_data, scheme)
    data = _Reader(signed_data, scheme)
    digests = [_Reader(d, scheme) for d in data.sequence(MAX_SIGNATURES, "digests")]
    digest_pairs = [(d.u32(), d.prefixed()) for d in digests]
    certificates = data.sequence(MAX_CERTIFICATES, "certificates")
    min_sdk = max_sdk = None
    if outer_sdk is not None:
        min_sdk, max_sdk = data.u32(), data.u32()
        if (min_sdk, max_sdk) != outer_sdk:
            raise SignatureError(scheme, "the signed min/max SDK differ from the unsigned ones")
        if min_sdk > max_sdk:
            raise SignatureError(scheme, f"min SDK {min_sdk} over max SDK {max_sdk}")
    attributes = [_Reader(a, scheme) for a in data.sequence(64, "attributes")]
    strips_v3 = False
    for attribute in attributes:
        if attribute.u32() == STRIPPING_PROTECTION_ATTR and attribute.left() >= 4:
            strips_v3 = strips_v3 or attribute.u32() == 3
    if [a for a, _ in pairs] != [a for a, _ in digest_pairs]:
        raise SignatureError(scheme, "the signature and digest algorithm lists differ")
    if not certificates:
        raise SignatureError(scheme, "no certificate")
    try:
        certificate = x509.load_der_x509_certificate(certificates[0])
    except ValueError:
        raise SignatureError(scheme, "unreadable certificate") from None
    if _public_der(certificate.public_key()) != _public_der(key):
        raise SignatureError(scheme, "the certificate's public key is not the signer's")
    return _BlockSigner(
        signer=Signer(scheme=scheme, certificate=certificates[0], min_sdk=min_sdk, max_sdk=max_sdk),
        digests={a: d for a, d in digest_pairs if a in ALGORITHMS},
        strips_v3=strips_v3,
    )


def block_signers(value: bytes, scheme: Scheme) -> list[_BlockSigner]:
    """Every signer of a v2/v3 block, each signature verified (not yet the content digest)."""
    signers = _Reader(value, scheme).sequence(MAX_SIGNERS, "signers")
    if not signers:
        raise SignatureError(scheme, "no signer")
    return [_block_signer(raw, scheme) for raw in signers]


def content_digests(f: BinaryIO, sections: ZipSections, names: set[str]) -> dict[str, bytes]:
    """The v2/v3 content digest for each hashlib name in `names`, in one streamed pass."""
    assert sections.block_offset is not None
    eocd = bytearray(sections.eocd)
    struct.pack_into("<L", eocd, 16, sections.block_offset)
    chunks: dict[str, list[bytes]] = {name: [] for name in names}

    def digest(chunk: bytes | memoryview) -> None:
        prefix = b"\xa5" + struct.pack("<I", len(chunk))
        for name, found in chunks.items():
            h = hashlib.new(name, prefix)
            h.update(chunk)
            found.append(h.digest())

    for start, end in ((0, sections.block_offset), (sections.cd_offset, sections.eocd_offset)):
        f.seek(start)
        while start < end:
            chunk = f.read(min(CHUNK_BYTES, end - start))
            if not chunk:
                raise SignatureError(Scheme.V2, "file cut short")
            digest(chunk)
            start += len(chunk)
    for at in range(0, len(eocd), CHUNK_BYTES):
        digest(memoryview(eocd)[at : at + CHUNK_BYTES])
    return {
        name: hashlib.new(name, b"\x5a" + struct.pack("<I", len(found)) + b"".join(found)).digest()
        for name, found in chunks.items()
    }


def verify_apk(
    f: BinaryIO,
    size: int,
    *,
    archive: str,
    target_sdk: int | None = None,
    limits: ZipLimits = DEFAULT_LIMITS,
) -> Verified:
    """Verify every signature scheme present; raise ApkError naming the first that fails."""
    sections = find_sections(f, size, archive)
    pairs = signing_block_pairs(f, sections, archive)
    try:
        by_scheme: dict[Scheme, list[_BlockSigner]] = {}
        for block_id in (V3_ID, V31_ID, V2_ID):
            if block_id in pairs:
                by_scheme[BLOCK_SCHEMES[block_id]] = block_signers(
                    pairs[block_id], BLOCK_SCHEMES[block_id]
                )
        if by_scheme:
            _check_content(f, sections, by_scheme)
        if any(s.strips_v3 for s in by_scheme.get(Scheme.V2, [])) and Scheme.V3 not in by_scheme:
            raise SignatureError(
                Scheme.V2, "its stripping protection says a v3 block was made, and none is here"
            )
        try:
            v1 = apk_v1.verify_v1(f, size, sections.cd_offset, archive, limits)
        except apk_v1.V1Error as exc:
            raise SignatureError(Scheme.V1, exc.why) from None
        if v1 is not None:
            for claimed, block_id in ((2, V2_ID), (3, V3_ID)):
                if claimed in v1.apk_signed and block_id not in pairs:
                    raise SignatureError(
                        Scheme.V1,
                        f"X-Android-APK-Signed says a v{claimed} block was made, and none is "
                        "here (stripped)",
                    )
    except SignatureError as exc:
        raise ApkError(
            f"{archive}: {SCHEME_NAMES[exc.scheme]} does not verify ({exc.why})",
            reason="bad_signature",
        ) from None
    signers = [s.signer for scheme in by_scheme.values() for s in scheme]
    if v1 is not None:
        signers += [Signer(scheme=Scheme.V1, certificate=c) for c in v1.certificates]
    if not signers:
        raise ApkError(
            f"{archive}: not signed (no v1 JAR signature and no APK Signature Scheme v2/v3 "
            "block); Android refuses unsigned APKs",
            reason="unsigned",
        )
    if v1 is not None and not by_scheme and target_sdk is not None and target_sdk >= 30:
        raise ApkError(
            f"{archive}: signed with the v1 JAR scheme only, but targetSdkVersion {target_sdk} "
            "needs APK Signature Scheme v2 or newer (Android 11+ refuses it)",
            reason="bad_signature",
        )
    return Verified(signers=tuple(signers))


def _check_content(
    f: BinaryIO, sections: ZipSections, by_scheme: dict[Scheme, list[_BlockSigner]]
) -> None:
    """Every signer's content digests equal the file's (one pass for all of them)."""
    names = {
        ALGORITHMS[a].digest for signers in by_scheme.values() for s in signers for a in s.digests
    }
    computed = content_digests(f, sections, names)
    for scheme, signers in by_scheme.items():
        for signer in signers:
            for algorithm, expected in signer.digests.items():
                if computed[ALGORITHMS[algorithm].digest] != expected:
                    raise SignatureError(scheme, "content digest mismatch")
