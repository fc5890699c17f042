"""A minimal DER reader for the PKCS#7 SignedData of an APK's v1 signature block.

`cryptography` loads X.509 certificates and public keys but does not expose a PKCS#7 SignerInfo,
so the few fields v1 verification needs are read here (RFC 2315 / RFC 5652): the certificates,
and per signer its issuer and serial number, digest algorithm, signed attributes, signature
algorithm and signature. Strict DER only: an indefinite length (BER), a length longer than what
holds it, or a truncated value raises DerError; nothing is trusted and every read is bounded by
the buffer it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE, SET, INTEGER, OCTET_STRING, OID = 0x30, 0x31, 0x02, 0x04, 0x06
CONTEXT_0, CONTEXT_0_PRIMITIVE, CONTEXT_1 = 0xA0, 0x80, 0xA1
SIGNED_DATA = "1.2.840.113549.1.7.2"
DATA = "1.2.840.113549.1.7.1"
CONTENT_TYPE_ATTR = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST_ATTR = "1.2.840.113549.1.9.4"


class DerError(ValueError):
    """The bytes are not the DER structure expected; str() says where."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One DER value: its tag, its whole encoding, and its contents."""

    tag: int
    raw: bytes
    content: bytes


def read(data: bytes, at: int = 0) -> tuple[Tlv, int]:
    """The value at `at` and the offset after it."""
    if at + 2 > len(data):
        raise DerError("value cut short")
    tag = data[at]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not used here")
    first = data[at + 1]
    start = at + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length (BER) is not DER")
    else:
        count = first & 0x7F
        if count > 4 or start + count > len(data):
            raise DerError("length field too long or cut short")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise DerError("value longer than its container")
    return Tlv(tag, data[at:end], data[start:end]), end


def children(content: bytes) -> list[Tlv]:
    """The values inside a constructed value's contents, in order."""
    found: list[Tlv] = []
    at = 0
    while at < len(content):
        value, at = read(content, at)
        found.append(value)
    return found


def expect(value: Tlv, tag: int, what: str) -> Tlv:
    if value.tag != tag:
        raise DerError(f"{what}: tag 0x{value.tag:02x}, expected 0x{tag:02x}")
    return value


def oid(value: Tlv) -> str:
    """Dotted text of an OBJECT IDENTIFIER."""
    body = expect(value, OID, "object identifier").content
    if not body:
        raise DerError("empty object identifier")
    arcs: list[int] = []
    current = 0
    for byte in body:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
    if body[-1] & 0x80:
        raise DerError("object identifier cut short")
    head = arcs[0]
    first = min(head // 40, 2)
    return ".".join(str(a) for a in [first, head - 40 * first, *arcs[1:]])


def algorithm(value: Tlv) -> str:
    """The OID of an AlgorithmIdentifier (its parameters are not needed here)."""
    parts = children(expect(value, SEQUENCE, "algorithm identifier").content)
    if not parts:
        raise DerError("empty algorithm identifier")
    return oid(parts[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class SignerInfo:
    issuer: bytes  # the issuer Name's DER, compared with each certificate's
    serial: bytes  # the serial number INTEGER's contents
    digest_algorithm: str
    signed_attrs: bytes | None  # re-tagged as a SET OF (what the signature covers), or None
    signature_algorithm: str
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedData:
    certificates: tuple[bytes, ...]  # DER of each certificate
    signers: tuple[SignerInfo, ...]
    detached: bool  # no encapsulated content: the signed bytes are the .SF file's


def signed_data(blob: bytes) -> SignedData:
    """The parts of a PKCS#7 ContentInfo holding a SignedData."""
    info, end = read(blob)
    if end != len(blob):
        raise DerError("bytes after the ContentInfo")
    parts = children(expect(info, SEQUENCE, "ContentInfo").content)
    if len(parts) != 2 or oid(parts[0]) != SIGNED_DATA:
        raise DerError("not a PKCS#7 SignedData")
    (body,) = children(expect(parts[1], CONTEXT_0, "ContentInfo content").content)
    fields = children(expect(body, SEQUENCE, "SignedData").content)
    if len(fields) < 4:
        raise DerError("SignedData cut short")
    encapsulated = children(expect(fields[2], SEQUENCE, "encapsulated content").content)
    certificates: tuple[bytes, ...] = ()
    rest = fields[3:]
    if rest and rest[0].tag == CONTEXT_0:
        certificates = tuple(c.raw for c in children(rest[0].content))
        rest = rest[1:]
    if rest and rest[0].tag == CONTEXT_1:
        rest = rest[1:]  # CRLs: not used
    if len(rest) != 1:
        raise DerError("SignedData has no signer infos")
    signers = tuple(_signer_info(s) for s in children(expect(rest[0], SET, "signerInfos").content))
    return SignedData(certificates=certificates, signers=signers, detached=len(encapsulated) == 1)


def _signer_info(value: Tlv) -> SignerInfo:
    fields = children(expect(value, SEQUENCE, "SignerInfo").content)
    if len(fields) < 5:
        raise DerError("SignerInfo cut short")
    sid = expect(fields[1], SEQUENCE, "SignerInfo sid (issuer and serial number)")
    sid_parts = children(sid.content)
    if len(sid_parts) != 2:
        raise DerError("SignerInfo sid is not an issuer and serial number")
    at = 3
    signed_attrs = None
    if fields[at].tag == CONTEXT_0:
        signed_attrs = bytes([SET]) + fields[at].raw[1:]  # signed as a SET OF (RFC 5652 5.4)
        at += 1
    if len(fields) < at + 2:
        raise DerError("SignerInfo cut short")
    return SignerInfo(
        issuer=expect(sid_parts[0], SEQUENCE, "issuer").raw,
        serial=expect(sid_parts[1], INTEGER, "serial number").content,
        digest_algorithm=algorithm(fields[2]),
        signed_attrs=signed_attrs,
        signature_algorithm=algorithm(fields[at]),
        signature=expect(fields[at + 1], OCTET_STRING, "signature").content,
    )


def signed_attribute(signed_attrs: bytes, wanted: str) -> list[Tlv]:
    """The values of attribute `wanted` (by OID) in a SET OF Attribute; [] if absent."""
    attrs, _ = read(signed_attrs)
    found: list[Tlv] = []
    for attr in children(attrs.content):
        parts = children(expect(attr, SEQUENCE, "attribute").content)
        if len(parts) == 2 and oid(parts[0]) == wanted:
            found.extend(children(expect(parts[1], SET, "attribute values").content))
    return found


def issuer_and_serial(certificate: bytes) -> tuple[bytes, bytes]:
    """(issuer Name DER, serial INTEGER contents) of a DER X.509 certificate, as written."""
    cert, _ = read(certificate)
    tbs = children(expect(cert, SEQUENCE, "certificate").content)
    if not tbs:
        raise DerError("empty certificate")
    fields = children(expect(tbs[0], SEQUENCE, "TBSCertificate").content)
    if fields and fields[0].tag == CONTEXT_0:
        fields = fields[1:]  # [0] version
    if len(fields) < 3:
        raise DerError("TBSCertificate cut short")
    return expect(fields[2], SEQUENCE, "issuer").raw, expect(fields[0], INTEGER, "serial").content
