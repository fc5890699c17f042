"""Android's whole-file OTA signature (`signapk -w`): locate it, parse it, verify it.

Theory of operation (as bootable/recovery's verifier and RecoverySystem.verifyPackage): the zip
comment ends with a 6-byte footer `[signature_start u16le, 0xff, 0xff, comment_size u16le]`.
The end-of-central-directory record (EOCD) starts `comment_size + 22` bytes before the end of
the file, and the EOCD magic may appear nowhere after its start (a second record hidden in the
comment is refused). The signature block is the DER of a PKCS#7/CMS SignedData, detached, from
`signature_start` bytes before the end of the file up to the footer. The signed part is the
whole file except its last `comment_size + 2` bytes (the comment and its length field).
midm_common.der parses the block (the reader the APK v1 check uses); its one SignerInfo names
its certificate in the block by issuer and serial number; its signature is RSA PKCS#1 v1.5 or
ECDSA over SHA-1/256/384/512, either over the file's digest (signapk: no signed attributes) or
over signed attributes whose messageDigest is that digest (openssl cms without -noattr). The
signed part is hashed in HASH_CHUNK_BYTES reads; `cryptography` is imported only once a
signature is there to check (an unsigned package, as a simulated fleet's, never pays for it).

Rules [ours, stricter than Android where it is loose]: "signed" means the last 6 bytes carry the
0xff 0xff marker; anything wrong after that is INVALID with a reason, never an exception. DER
only (definite lengths), a block of at most MAX_BLOCK_BYTES, at most MAX_CERTIFICATES
certificates, exactly one signer (signapk makes one; Android reads only the first), the content
detached, RSA keys of at least MIN_RSA_BITS bits. Certificates are not checked for dates or a
chain: as on Android, trust is the signer's public key being one the verifier trusts
(`trusted_by` compares SubjectPublicKeyInfo DER, as RecoverySystem compares public keys).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, BinaryIO

from midm_common import der

if TYPE_CHECKING:
    from cryptography import x509

FOOTER_BYTES = 6
EOCD_BYTES = 22  # the EOCD record without its comment
EOCD_MAGIC = b"PK\x05\x06"
MAX_COMMENT_BYTES = 0xFFFF  # the comment's size is a 16-bit field
MAX_BLOCK_BYTES = 32 * 1024  # a real block (one 4096-bit RSA certificate) is about 2 KiB
MAX_CERTIFICATES = 4
MIN_RSA_BITS = 2048
HASH_CHUNK_BYTES = 1 << 20

_HASHES: dict[str, str] = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
# signatureAlgorithm OID -> (key kind, the hash it names or "" when the digest algorithm says)
_SIGNATURES: dict[str, tuple[str, str]] = {
    "1.2.840.113549.1.1.1": ("rsa", ""),
    "1.2.840.113549.1.1.5": ("rsa", "sha1"),
    "1.2.840.113549.1.1.11": ("rsa", "sha256"),
    "1.2.840.113549.1.1.12": ("rsa", "sha384"),
    "1.2.840.113549.1.1.13": ("rsa", "sha512"),
    "1.2.840.10045.2.1": ("ec", ""),
    "1.2.840.10045.4.1": ("ec", "sha1"),
    "1.2.840.10045.4.3.2": ("ec", "sha256"),
    "1.2.840.10045.4.3.3": ("ec", "sha384"),
    "1.2.840.10045.4.3.4": ("ec", "sha512"),
}


class SignatureStatus(StrEnum):
    UNSIGNED = "unsigned"  # no whole-file signature footer
    VALID = "valid"  # the signature verifies with the certificate it names
    INVALID = "invalid"  # a footer, but the block is malformed or does not verify


@dataclass(frozen=True, slots=True, kw_only=True)
class OtaSignature:
    """What a package's whole-file signature says; `reason` names what failed (INVALID)."""

    status: SignatureStatus
    reason: str = ""
    signer_pem: str = field(default="", repr=False)  # VALID: the signer's certificate, PEM
    signer_key: bytes = field(default=b"", repr=False)  # VALID: its SubjectPublicKeyInfo, DER
    digest: str = ""  # VALID: the hash the signature is over (sha256, sha1, ...)


UNSIGNED = OtaSignature(status=SignatureStatus.UNSIGNED)


class SignatureError(ValueError):
    """The signature is present but wrong; str() says what (without the 'signature: ' prefix)."""


def invalid(reason: str) -> OtaSignature:
    return OtaSignature(status=SignatureStatus.INVALID, reason=f"signature: {reason}")


# -- locating ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    block: bytes  # the DER SignedData
    signed_length: int  # bytes from the start of the file that the signature covers


def tail_length(size: int) -> int:
    """How many bytes from the end of a file `locate` needs: the largest comment and its EOCD."""
    return min(size, MAX_COMMENT_BYTES + EOCD_BYTES)


def locate(tail: bytes, size: int) -> Location | None:
    """Find the signature block in the last `tail_length(size)` bytes of a file of `size` bytes;
    None when the file is not signed. SignatureError when the footer's sizes do not hold."""
    if size < FOOTER_BYTES + EOCD_BYTES or tail[-4:-2] != b"\xff\xff":
        return None
    signature_start = int.from_bytes(tail[-6:-4], "little")
    comment_size = int.from_bytes(tail[-2:], "little")
    if signature_start > comment_size:
        raise SignatureError(
            f"the footer puts the block {signature_start} bytes from the end, past the "
            f"{comment_size}-byte comment"
        )
    if signature_start <= FOOTER_BYTES:
        raise SignatureError(f"the footer's block start {signature_start} lies in the footer")
    eocd_size = comment_size + EOCD_BYTES
    if eocd_size > size:
        raise SignatureError(
            f"the footer's comment size {comment_size} is more than the file holds"
        )
    eocd = tail[len(tail) - eocd_size :]
    if eocd[:4] != EOCD_MAGIC:
        raise SignatureError(
            f"no end-of-central-directory record {eocd_size} bytes from the end, where the "
            f"footer's comment size {comment_size} puts it"
        )
    if int.from_bytes(eocd[20:22], "little") != comment_size:
        raise SignatureError(
            f"the zip's comment length {int.from_bytes(eocd[20:22], 'little')} is not the "
            f"footer's {comment_size}"
        )
    if eocd.find(EOCD_MAGIC, 4) != -1:
        raise SignatureError("an end-of-central-directory marker inside the comment")
    block = eocd[eocd_size - signature_start : eocd_size - FOOTER_BYTES]
    if len(block) > MAX_BLOCK_BYTES:
        raise SignatureError(f"a {len(block)}-byte block; the limit is {MAX_BLOCK_BYTES}")
    return Location(block=block, signed_length=size - comment_size - 2)


# -- the block ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    """The one signer of a block, with what verifying it needs."""

    certificate: bytes  # DER, the block's certificate its SignerInfo names
    digest: str  # sha1, sha256, ...
    key_kind: str  # rsa, ec
    signed_attrs: bytes | None  # the SET OF that is signed; None: the digest itself is signed
    message_digest: bytes  # the messageDigest attribute, when signed attributes
    signature: bytes


def parse_block(block: bytes) -> Signer:
    """The signer of a detached SignedData block (midm_common.der reads the DER)."""
    try:
        data = der.signed_data(block)
    except ValueError as exc:  # der.DerError, or a count that does not unpack
        raise SignatureError(f"the block is not a DER PKCS#7 SignedData ({exc})") from exc
    if not data.detached:
        raise SignatureError("the block carries its content: a detached signature is expected")
    if not data.certificates or len(data.certificates) > MAX_CERTIFICATES:
        raise SignatureError(
            f"{len(data.certificates)} certificates; 1 to {MAX_CERTIFICATES} are expected"
        )
    if len(data.signers) != 1:
        raise SignatureError(f"{len(data.signers)} signers; exactly one is expected")
    info = data.signers[0]
    digest = _HASHES.get(info.digest_algorithm)
    if digest is None:
        raise SignatureError(f"digest algorithm {info.digest_algorithm} is not supported")
    kind, named = _SIGNATURES.get(info.signature_algorithm, ("", ""))
    if not kind:
        raise SignatureError(f"signature algorithm {info.signature_algorithm} is not supported")
    if named and named != digest:
        raise SignatureError(f"a signature algorithm over {named}, a digest algorithm {digest}")
    try:
        certificate = next(
            (
                c
                for c in data.certificates
                if der.issuer_and_serial(c) == (info.issuer, info.serial)
            ),
            b"",
        )
        message_digest = b""
        if info.signed_attrs is not None:
            message_digest = _message_digest(info.signed_attrs)
    except ValueError as exc:
        raise SignatureError(f"the block's DER is malformed ({exc})") from exc
    if not certificate:
        raise SignatureError("the signer's certificate is not in the block")
    return Signer(
        certificate=certificate,
        digest=digest,
        key_kind=kind,
        signed_attrs=info.signed_attrs,
        message_digest=message_digest,
        signature=info.signature,
    )


def _message_digest(signed_attrs: bytes) -> bytes:
    """The one messageDigest of signed attributes whose one contentType is id-data."""
    content_type = der.signed_attribute(signed_attrs, der.CONTENT_TYPE_ATTR)
    if len(content_type) != 1 or der.oid(content_type[0]) != der.DATA:
        raise SignatureError("signed attributes: one contentType, id-data, is expected")
    digest = der.signed_attribute(signed_attrs, der.MESSAGE_DIGEST_ATTR)
    if len(digest) != 1:
        raise SignatureError("signed attributes: one messageDigest is expected")
    return der.expect(digest[0], der.OCTET_STRING, "messageDigest").content


# -- the signature -------------------------------------------------------------------------


def signer_certificate(signer: Signer) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(signer.certificate)
    except (ValueError, x509.InvalidVersion) as exc:
        raise SignatureError(f"the signer's certificate does not parse ({exc})") from exc


def public_key_der(certificate: x509.Certificate) -> bytes:
    """The certificate's SubjectPublicKeyInfo, DER: what trust compares."""
    from cryptography.hazmat.primitives import serialization

    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_signature(certificate: x509.Certificate, signer: Signer, digest: bytes) -> None:
    """Verify `signer`'s signature with `certificate`'s key; `digest` is the signed part's
    hash with the signer's digest algorithm. SignatureError when it does not verify."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    algorithm: hashes.HashAlgorithm = getattr(hashes, signer.digest.upper())()
    if signer.signed_attrs is not None:
        if not hmac.compare_digest(signer.message_digest, digest):
            raise SignatureError(
                f"the file's {signer.digest} is not the signed messageDigest (the signed part "
                "was changed)"
            )
        data, prehashed = signer.signed_attrs, False
    else:
        data, prehashed = digest, True
    chosen: hashes.HashAlgorithm | utils.Prehashed = (
        utils.Prehashed(algorithm) if prehashed else algorithm
    )
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"the signer's key cannot be read ({exc})") from exc
    try:
        if isinstance(key, rsa.RSAPublicKey) and signer.key_kind == "rsa":
            if key.key_size < MIN_RSA_BITS:
                raise SignatureError(
                    f"a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits are required"
                )
            key.verify(signer.signature, data, padding.PKCS1v15(), chosen)
        elif isinstance(key, ec.EllipticCurvePublicKey) and signer.key_kind == "ec":
            key.verify(signer.signature, data, ec.ECDSA(chosen))
        else:
            raise SignatureError(
                f"a {signer.key_kind.upper()} signature with a {type(key).__name__} key"
            )
    except InvalidSignature as exc:
        what = "signed attributes" if signer.signed_attrs is not None else "signed part"
        raise SignatureError(
            f"the signature does not verify with the signer's key (the {what} or the "
            "signature was changed)"
        ) from exc


# -- the whole file ------------------------------------------------------------------------


def digest_of(handle: BinaryIO, length: int, algorithm: str) -> bytes:
    """The hash of the first `length` bytes of `handle`, read in HASH_CHUNK_BYTES pieces."""
    hasher = hashlib.new(algorithm)
    handle.seek(0)
    left = length
    while left:
        chunk = handle.read(min(left, HASH_CHUNK_BYTES))
        if not chunk:
            raise SignatureError("the file ended before its signed part")
        hasher.update(chunk)
        left -= len(chunk)
    return hasher.digest()


def read_signature(handle: BinaryIO, size: int) -> OtaSignature:
    """The whole-file signature of the file open as `handle` (`size` bytes): UNSIGNED, VALID
    with its signer, or INVALID with the reason. Only OSError escapes (the file's, not the
    content's)."""
    from cryptography.hazmat.primitives import serialization

    try:
        handle.seek(size - tail_length(size))
        location = locate(handle.read(tail_length(size)), size)
        if location is None:
            return UNSIGNED
        signer = parse_block(location.block)
        certificate = signer_certificate(signer)
        digest = digest_of(handle, location.signed_length, signer.digest)
        check_signature(certificate, signer, digest)
    except SignatureError as exc:
        return invalid(str(exc))
    return OtaSignature(
        status=SignatureStatus.VALID,
        signer_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        signer_key=public_key_der(certificate),
        digest=signer.digest,
    )


def trusted_keys_of_pem(data: bytes) -> frozenset[bytes]:
    """The public keys (SubjectPublicKeyInfo DER) of the PEM certificates in `data`;
    ValueError when it holds none or one that does not parse."""
    from cryptography import x509

    return frozenset(public_key_der(c) for c in x509.load_pem_x509_certificates(data))


def trusted_by(signature: OtaSignature, keys: frozenset[bytes]) -> str:
    """Why a package with `signature` may not be installed by a verifier trusting `keys`;
    "" when it may."""
    if signature.status is SignatureStatus.UNSIGNED:
        return "the package is not signed"
    if signature.status is SignatureStatus.INVALID:
        return signature.reason
    if signature.signer_key not in keys:
        return "signed by a certificate that is not trusted"
    return ""
