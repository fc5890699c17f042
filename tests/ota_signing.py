"""Signs OTA packages the way `signapk -w` does, with `cryptography`, for the tests and benches.

signapk writes the zip with an empty comment, signs all of it but the comment's length field
(a detached CMS SignedData, no signed attributes), then appends the comment
`"signed by SignApk" 0x00 <DER block> <footer>`, footer = `[signature_start u16le, 0xff, 0xff,
comment_size u16le]`, signature_start counting from the end of the file to the block's start.
"""

from __future__ import annotations

import functools
import io
import zipfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from tests.certs import private_key, self_signed

MESSAGE = b"signed by SignApk"


@dataclass(frozen=True, slots=True)
class Signer:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@functools.cache
def signer(name: str, kind: str = "rsa") -> Signer:
    """A self-signed certificate and its key (made once per name and kind per process)."""
    key = private_key(kind)
    cert = self_signed(key, name)
    return Signer(key, cert)


def signed_part(package: bytes) -> bytes:
    """What a signature of a zip with an empty comment covers: all but the comment length."""
    assert package[-22:-18] == b"PK\x05\x06" and package[-2:] == b"\0\0", "an uncommented zip"
    return package[:-2]


def cms_block(
    data: bytes,
    who: Signer,
    *,
    digest: hashes.HashAlgorithm | None = None,
    attributes: bool = False,
) -> bytes:
    """A detached DER SignedData over `data` (signapk's: no signed attributes)."""
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(who.cert, who.key, digest or hashes.SHA256())  # type: ignore[arg-type]
        .sign(serialization.Encoding.DER, options)
    )


def assemble(signed: bytes, block: bytes, message: bytes = MESSAGE) -> bytes:
    """`signed` (a zip without its comment length) + the comment carrying `block`."""
    total = len(message) + 1 + len(block) + 6
    start = len(block) + 6
    footer = start.to_bytes(2, "little") + b"\xff\xff" + total.to_bytes(2, "little")
    return signed + total.to_bytes(2, "little") + message + b"\0" + block + footer


def sign_package(
    package: bytes,
    who: Signer,
    *,
    digest: hashes.HashAlgorithm | None = None,
    attributes: bool = False,
) -> bytes:
    """`package` (a zip without comment) signed as `signapk -w` signs it."""
    data = signed_part(package)
    return assemble(data, cms_block(data, who, digest=digest, attributes=attributes))


def block_of(package: bytes) -> tuple[bytes, bytes]:
    """(the signed part, the DER block) of a signed package, read back from its footer."""
    start = int.from_bytes(package[-6:-4], "little")
    comment = int.from_bytes(package[-2:], "little")
    return package[: len(package) - comment - 2], package[len(package) - start : -6]


def payload_offset(package: bytes) -> int:
    """Where payload.bin's (compressed) bytes start in a package: a byte changed there is in
    the signed part while the metadata still reads."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        at = archive.getinfo("payload.bin").header_offset
    name_len = int.from_bytes(package[at + 26 : at + 28], "little")
    extra_len = int.from_bytes(package[at + 28 : at + 30], "little")
    return at + 30 + name_len + extra_len
