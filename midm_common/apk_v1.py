"""Verify an APK's v1 (JAR) signature, as apksig's V1SchemeVerifier does; used by apk_signature.

Theory of operation:
- Signers: each META-INF/<NAME>.SF (directly in META-INF) with its signature block file
  META-INF/<NAME>.RSA, .EC or .DSA (a .SF without one is refused; a block without a .SF is no
  signer, as for Android). Every signer must verify.
- The block is a PKCS#7 SignedData (midm_common.der) with one SignerInfo; its certificate is
  found by issuer and serial number; its signature is over the .SF (or over the signed
  attributes, whose message digest must be the .SF's) with the certificate's key.
- The .SF covers MANIFEST.MF: a whole-manifest digest that matches covers every section; else
  each .SF section's digest must match its manifest section's bytes.
- MANIFEST.MF: every entry that needs one (not a directory, not META-INF's own signature files)
  has a section whose digests match its inflated bytes, streamed (never held); every section
  names an entry that exists; every such entry is covered by every signer.
- `X-Android-APK-Signed` of each .SF is returned; apk_signature refuses a claimed but missing
  v2/v3 block (stripping protection).
Digests: SHA-1 (what apksigner writes for minSdk < 18, so what old APKs carry), SHA-256, -384,
-512; MD5 is not accepted. A signature failure raises V1Error(why); limits and zip damage
raise ApkError (over_limit, bad_zip).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa

from midm_common import der, zipguard
from midm_common.errors import ApkError
from midm_common.zipguard import ZipLimits

MAX_MANIFEST_BYTES = 32 << 20  # inflated MANIFEST.MF or .SF: one ~150-byte section per entry,
# so zip32's 65,535 entries with long names fit; a bigger one is no real APK's
MAX_SIGNATURE_BLOCK_BYTES = 1 << 20  # a .RSA/.EC/.DSA file: a certificate chain and a signature
MAX_V1_SIGNERS = 10  # .SF files: real APKs have one; each costs a pass over the manifest
MAX_INFLATED_BYTES = 4 << 30  # all entries' bytes digested: Android's zip32 APKs stay under 4 GiB
# in all; hashing that takes ~10 s, within the upload parser's time limit
STEP = 1 << 20  # bytes read, or inflated, at a time while digesting an entry

_LOCAL = struct.Struct("<4s5H3L2H")  # 30 bytes
_EOL = re.compile(rb"\r\n|\n|\r")
_BLOCK_SUFFIXES = (".RSA", ".EC", ".DSA")
_HASHES = {"SHA1": "sha1", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384",
           "SHA-512": "sha512"}  # fmt: skip
_OID_HASHES = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_KEY_ONLY = {"1.2.840.113549.1.1.1": "RSA", "1.2.840.10045.2.1": "EC", "1.2.840.10040.4.1": "DSA"}
_WITH_HASH = {
    "1.2.840.113549.1.1.5": ("RSA", "sha1"),
    "1.2.840.113549.1.1.11": ("RSA", "sha256"),
    "1.2.840.113549.1.1.12": ("RSA", "sha384"),
    "1.2.840.113549.1.1.13": ("RSA", "sha512"),
    "1.2.840.10045.4.1": ("EC", "sha1"),
    "1.2.840.10045.4.3.2": ("EC", "sha256"),
    "1.2.840.10045.4.3.3": ("EC", "sha384"),
    "1.2.840.10045.4.3.4": ("EC", "sha512"),
    "1.2.840.10040.4.3": ("DSA", "sha1"),
    "2.16.840.1.101.3.4.3.2": ("DSA", "sha256"),
}
_CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}  # fmt: skip


class V1Error(Exception):
    """The v1 signature does not verify; `why` is the short parenthesised reason."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True, slots=True, kw_only=True)
class V1Result:
    certificates: tuple[bytes, ...]  # each signer's certificate (DER as written), in file order
    apk_signed: frozenset[int]  # schemes named by X-Android-APK-Signed in any .SF


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    """One manifest section: its attributes (names upper-cased) and its bytes as written."""

    attrs: dict[str, str]
    raw: bytes


def parse_manifest(data: bytes, what: str) -> tuple[Section, dict[str, Section]]:
    """(main section, individual sections by Name) of a JAR manifest or .SF file."""
    blocks: list[tuple[list[bytes], bytes]] = []
    lines: list[bytes] = []
    pos = start = 0
    while pos < len(data):
        eol = _EOL.search(data, pos)
        line, after = (data[pos : eol.start()], eol.end()) if eol else (data[pos:], len(data))
        if line:
            if not lines:
                start = pos
            lines.append(line)
        elif lines or not blocks:
            blocks.append((lines, data[start:after]))
            lines, start = [], after
        pos = after
    if lines:
        blocks.append((lines, data[start:]))
    if not blocks:
        raise V1Error(f"{what} is empty")
    main = Section(attrs=_attributes(blocks[0][0], what), raw=blocks[0][1])
    sections: dict[str, Section] = {}
    for block_lines, raw in blocks[1:]:
        attrs = _attributes(block_lines, what)
        name = attrs.get("NAME")
        if name is None:
            raise V1Error(f"{what} has a section without a Name")
        if name in sections:
            raise V1Error(f"{what} names {name!r} twice")
        sections[name] = Section(attrs=attrs, raw=raw)
    return main, sections


def _attributes(lines: list[bytes], what: str) -> dict[str, str]:
    joined: list[bytearray] = []
    for line in lines:
        if line[:1] == b" ":
            if not joined:
                raise V1Error(f"{what} starts a section with a continuation line")
            joined[-1] += line[1:]
        else:
            joined.append(bytearray(line))
    attrs: dict[str, str] = {}
    for raw in joined:
        key, sep, value = bytes(raw).partition(b": ")
        if not sep or not key:
            raise V1Error(f"{what} has a line that is not 'Name: value'")
        try:
            name, text = key.decode("ascii").upper(), value.decode("utf-8")
        except UnicodeDecodeError:
            raise V1Error(f"{what} is not UTF-8") from None
        if name in attrs:
            raise V1Error(f"{what} repeats {key.decode('ascii', 'replace')} in a section")
        attrs[name] = text
    return attrs


def _digests(attrs: dict[str, str], suffix: str) -> dict[str, bytes]:
    """{hashlib name: expected digest} of the `<ALG><suffix>` attributes with a known ALG."""
    found: dict[str, bytes] = {}
    for key, value in attrs.items():
        if key.endswith(suffix) and key[: -len(suffix)] in _HASHES:
            try:
                found[_HASHES[key[: -len(suffix)]]] = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise V1Error(f"a {key} that is not base64") from None
    return found


def needs_digest(name: str) -> bool:
    """Whether a zip entry must be digested in MANIFEST.MF (apksig's rule)."""
    if name.endswith("/"):
        return False
    if not name.startswith("META-INF/") or "/" in name[len("META-INF/") :]:
        return True
    base = name[len("META-INF/") :].lower()
    return not (
        base == "manifest.mf"
        or base.endswith((".sf", ".rsa", ".dsa", ".ec"))
        or base.startswith("sig-")
    )


class _Zip:
    """The archive's entries, each read or digested within limits."""

    def __init__(self, f: BinaryIO, size: int, limits: ZipLimits, archive: str) -> None:
        self.f, self.limits, self.archive = f, limits, archive
        entries = zipguard.central_directory(f, size, limits, ApkError, archive)
        self.entries: dict[str, zipguard.Entry] = {}
        for entry in entries:
            if entry.name in self.entries:
                raise V1Error(f"two zip entries named {entry.name!r}")
            self.entries[entry.name] = entry
        self.inflated = 0

    def _data_offset(self, entry: zipguard.Entry) -> int:
        self.f.seek(entry.local_offset)
        header = self.f.read(_LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise zipguard_bad(self.archive, f"{entry.name}: no local header")
        fields = _LOCAL.unpack(header)
        name = self.f.read(fields[9])
        encoding = "utf-8" if fields[2] & 0x800 else "cp437"
        declared = (fields[6], fields[7], fields[8])  # crc, compressed, inflated
        central = (entry.crc, entry.compressed_size, entry.uncompressed_size)
        sizes_differ = not fields[2] & 0x08 and 0xFFFFFFFF not in declared and declared != central
        if (
            name.decode(encoding, errors="replace") != entry.name
            or fields[3] != entry.method
            or sizes_differ  # androguard reads by the local sizes: both must name the same bytes
        ):
            raise V1Error(f"{entry.name}: its local header differs from the central directory")
        return int(entry.local_offset + _LOCAL.size + fields[9] + fields[10])

    def read(self, name: str, limit: int) -> bytes:
        entry = self.entries[name]
        zipguard.check_declared(
            zipguard.Declared(
                method=entry.method,
                compressed_size=entry.compressed_size,
                uncompressed_size=entry.uncompressed_size,
            ),
            name,
            limit,
            self.limits,
            ApkError,
            self.archive,
        )
        read = zipguard.file_reader(self.f, self._data_offset(entry))
        if entry.method == zipguard.STORED:
            return zipguard.read_stored(
                read, entry.compressed_size, name, limit, ApkError, self.archive
            )
        self._method(entry)
        return zipguard.inflate(
            read, entry.compressed_size, name, limit, self.limits, ApkError, self.archive
        )

    def _method(self, entry: zipguard.Entry) -> None:
        if entry.method not in (zipguard.STORED, zipguard.DEFLATED):
            raise zipguard_bad(self.archive, f"{entry.name}: compression method {entry.method}")

    def digest(self, name: str, algorithms: set[str]) -> dict[str, bytes]:
        """The entry's inflated bytes hashed with each algorithm, streamed."""
        entry = self.entries[name]
        self._method(entry)
        read = zipguard.file_reader(self.f, self._data_offset(entry))
        hashers = [hashlib.new(a) for a in sorted(algorithms)]
        produced = 0
        left = entry.compressed_size
        inflater = zlib.decompressobj(-15) if entry.method == zipguard.DEFLATED else None
        pending = b""
        while True:
            if not pending and left > 0:
                pending = read(min(STEP, left))
                if not pending:
                    raise zipguard_bad(self.archive, f"{name}: cut short")
                left -= len(pending)
            if inflater is None:
                out, pending = pending, b""
            else:
                try:
                    out = inflater.decompress(pending, STEP)
                except zlib.error as exc:
                    raise zipguard_bad(self.archive, f"{name}: {exc}") from None
                pending = inflater.unconsumed_tail
            produced += len(out)
            self.inflated += len(out)
            if produced > entry.uncompressed_size:
                raise V1Error(f"{name} inflates past its declared size")
            if self.inflated > MAX_INFLATED_BYTES:
                raise ApkError(
                    f"{self.archive}: the entries inflate past the limit of "
                    f"{MAX_INFLATED_BYTES} bytes in all",
                    reason="over_limit",
                )
            for h in hashers:
                h.update(out)
            done = inflater.eof if inflater is not None else left == 0
            if done or (not out and not pending and left == 0):
                break
        if produced != entry.uncompressed_size or (inflater is not None and not inflater.eof):
            raise V1Error(f"{name} is not as long as the central directory says")
        return {a: h.digest() for a, h in zip(sorted(algorithms), hashers, strict=True)}


def zipguard_bad(archive: str, what: str) -> ApkError:
    return ApkError(f"{archive}: not a zip archive or truncated ({what})", reason="bad_zip")


def _signers(z: _Zip) -> list[tuple[str, str]]:
    """(.SF name, block name) of each signer, in the central directory's order."""
    found: list[tuple[str, str]] = []
    for name in z.entries:
        if not (name.startswith("META-INF/") and name.upper().endswith(".SF")):
            continue
        if "/" in name[len("META-INF/") :]:
            continue
        stem = name[:-3]
        blocks = [stem + s for s in _BLOCK_SUFFIXES if stem + s in z.entries]
        if not blocks:
            raise V1Error(f"{name} has no signature block file (.RSA, .EC or .DSA)")
        found.append((name, blocks[0]))
    if len(found) > MAX_V1_SIGNERS:
        raise ApkError(
            f"{z.archive}: more than {MAX_V1_SIGNERS} v1 signers (limit {MAX_V1_SIGNERS})",
            reason="over_limit",
        )
    return found


def verify_block(block: bytes, signed: bytes, what: str) -> bytes:
    """The certificate (DER) of the PKCS#7 `block` whose one signature is over `signed`."""
    try:
        data = der.signed_data(block)
        if not data.detached:
            raise V1Error(f"{what} is not a detached signature")
        if len(data.signers) != 1:
            raise V1Error(f"{what} has {len(data.signers)} signer infos, not one")
        (info,) = data.signers
        matches = [
            c for c in data.certificates if der.issuer_and_serial(c) == (info.issuer, info.serial)
        ]
        if not matches:
            raise V1Error(f"{what} holds no certificate of its signer")
        digest = _OID_HASHES.get(info.digest_algorithm)
        if digest is None:
            raise V1Error(f"{what}: unsupported digest algorithm {info.digest_algorithm}")
        covered = signed
        if info.signed_attrs is not None:
            types = der.signed_attribute(info.signed_attrs, der.CONTENT_TYPE_ATTR)
            digests = der.signed_attribute(info.signed_attrs, der.MESSAGE_DIGEST_ATTR)
            if [der.oid(t) for t in types] != [der.DATA] or len(digests) != 1:
                raise V1Error(f"{what}: signed attributes without one content type and digest")
            if digests[0].content != hashlib.new(digest, signed).digest():
                raise V1Error(f"{what}: the signed message digest is not the .SF file's")
            covered = info.signed_attrs
    except der.DerError as exc:
        raise V1Error(f"{what} is not a PKCS#7 signature ({exc})") from None
    try:
        certificate = x509.load_der_x509_certificate(matches[0])
    except ValueError:
        raise V1Error(f"{what}: unreadable certificate") from None
    _verify_key(certificate.public_key(), info, digest, info.signature, covered, what)
    return matches[0]


def _verify_key(
    key: object, info: der.SignerInfo, digest: str, signature: bytes, data: bytes, what: str
) -> None:
    family = _KEY_ONLY.get(info.signature_algorithm)
    if family is None:
        family, named = _WITH_HASH.get(info.signature_algorithm, ("", ""))
        if named != digest:
            raise V1Error(f"{what}: unsupported signature algorithm {info.signature_algorithm}")
    algorithm = _CRYPTO_HASHES[digest]()
    try:
        if family == "RSA" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif family == "EC" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif family == "DSA" and isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, data, algorithm)
        else:
            raise V1Error(f"{what}: a {family} signature with a {type(key).__name__}")
    except InvalidSignature:
        raise V1Error(f"{what}: the signature over the .SF file is not its certificate's") from None


def _covered(sf: bytes, sf_name: str, manifest: bytes, sections: dict[str, Section]) -> set[str]:
    """The manifest sections a .SF file covers (all when its whole-manifest digest matches)."""
    sf_main, sf_sections = parse_manifest(sf, sf_name)
    whole = _digests(sf_main.attrs, "-DIGEST-MANIFEST")
    if whole and all(hashlib.new(a, manifest).digest() == d for a, d in whole.items()):
        return set(sections)
    for name, sf_section in sf_sections.items():
        if name not in sections:
            raise V1Error(f"{sf_name} names {name!r}, which MANIFEST.MF has not")
        expected = _digests(sf_section.attrs, "-DIGEST")
        if not expected:
            raise V1Error(f"{sf_name} has no supported digest for {name!r}")
        raw = sections[name].raw
        if any(hashlib.new(a, raw).digest() != d for a, d in expected.items()):
            raise V1Error(f"{sf_name}: the digest of MANIFEST.MF's section {name!r} does not match")
    return set(sf_sections)


def _apk_signed(sf: bytes, sf_name: str) -> set[int]:
    main, _ = parse_manifest(sf, sf_name)
    claimed: set[int] = set()
    for part in main.attrs.get("X-ANDROID-APK-SIGNED", "").split(","):
        if part.strip().isdigit():
            claimed.add(int(part.strip()))
    return claimed


def verify_v1(
    f: BinaryIO, size: int, cd_offset: int, archive: str, limits: ZipLimits
) -> V1Result | None:
    """The v1 signers' certificates, or None when the APK has no v1 signature."""
    del cd_offset  # the central directory is found again by zipguard (checked equal upstream)
    z = _Zip(f, size, limits, archive)
    signers = _signers(z)
    if not signers:
        return None
    if "META-INF/MANIFEST.MF" not in z.entries:
        raise V1Error("no META-INF/MANIFEST.MF")
    manifest = z.read("META-INF/MANIFEST.MF", MAX_MANIFEST_BYTES)
    _, sections = parse_manifest(manifest, "MANIFEST.MF")
    certificates: list[bytes] = []
    apk_signed: set[int] = set()
    coverage: list[set[str]] = []
    for sf_name, block_name in signers:
        sf = z.read(sf_name, MAX_MANIFEST_BYTES)
        block = z.read(block_name, MAX_SIGNATURE_BLOCK_BYTES)
        certificates.append(verify_block(block, sf, block_name))
        coverage.append(_covered(sf, sf_name, manifest, sections))
        apk_signed |= _apk_signed(sf, sf_name)
    for name in sections:
        if name not in z.entries:
            raise V1Error(f"MANIFEST.MF names {name!r}, which the APK has not")
    for name in z.entries:
        if not needs_digest(name):
            continue
        section = sections.get(name)
        if section is None:
            raise V1Error(f"{name} is not in MANIFEST.MF (unsigned entry)")
        if not all(name in covered for covered in coverage):
            raise V1Error(f"{name} is not covered by every .SF file")
        expected = _digests(section.attrs, "-DIGEST")
        if not expected:
            raise V1Error(f"MANIFEST.MF has no supported digest for {name!r}")
        actual = z.digest(name, set(expected))
        if actual != expected:
            raise V1Error(f"the MANIFEST.MF digest of {name} does not match its bytes")
    return V1Result(certificates=tuple(certificates), apk_signed=frozenset(apk_signed))
