"""Signing identities for generated APKs: an RSA-2048 key and its self-signed X.509 certificate.

`Signer.derive(name)` is deterministic: the key's primes come from a SHA-256 counter stream seeded
by the name, and the certificate has fixed dates and a serial from the same stream, so one name
gives the same certificate (and `cert_md5`) in every process and on every machine (a scenario's
"release" and "other" keys are just two names). `Signer.generate()` draws a fresh random key.
`default_signer()` is `derive("midm-sim release")`, made once per process (~0.1-0.5 s).
Nothing here is secret: these are test identities, never use them to sign real software.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import math
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

DEFAULT_SIGNER_NAME = "midm-sim release"
_PUBLIC_EXPONENT = 65537
_KEY_BITS = 2048
_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(2070, 1, 1, tzinfo=datetime.UTC)
_SMALL_PRIMES_PRODUCT = math.prod(
    n for n in range(3, 4000, 2) if all(n % d for d in range(3, int(n**0.5) + 1, 2))
)
_MILLER_RABIN_ROUNDS = 8  # FIPS 186-4 table C.3 asks 5 for 1024-bit primes (error < 2^-100)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    """A private key and its certificate; `cert_der`/`cert_md5` are what Android reports."""

    name: str
    key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)
    cert_der: bytes = field(repr=False)
    cert_md5: str

    @classmethod
    def derive(cls, name: str) -> Signer:
        """The signer named `name`: the same key and certificate every time (cached)."""
        return _derived(name)

    @classmethod
    def generate(cls, name: str = "midm-sim random") -> Signer:
        """A fresh random key (another certificate, another cert_md5, at every call)."""
        key = rsa.generate_private_key(public_exponent=_PUBLIC_EXPONENT, key_size=_KEY_BITS)
        return _signer(name, key, x509.random_serial_number())

    @property
    def public_key_der(self) -> bytes:
        """SubjectPublicKeyInfo, DER (what an APK Signature Scheme v2 block carries)."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def default_signer() -> Signer:
    return _derived(DEFAULT_SIGNER_NAME)


def signers(count: int, prefix: str = "midm-sim key") -> tuple[Signer, ...]:
    """`count` distinct deterministic signers (`prefix 1`, `prefix 2`, ...): cert-mismatch cases."""
    return tuple(_derived(f"{prefix} {i}") for i in range(1, count + 1))


@functools.lru_cache(maxsize=64)
def _derived(name: str) -> Signer:
    stream = _Stream(b"midm-sim signer\x00" + name.encode())
    p = _prime(stream, _KEY_BITS // 2)
    q = _prime(stream, _KEY_BITS // 2)
    while q == p:  # pragma: no cover - 2^-500
        q = _prime(stream, _KEY_BITS // 2)
    serial = stream.bits(127) | (1 << 126)  # positive, fits the 20-octet limit
    return _signer(name, _rsa_key(p, q), serial)


def _signer(name: str, key: rsa.RSAPrivateKey, serial: int) -> Signer:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "midm-fleet simulator"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .sign(key, hashes.SHA256())  # PKCS#1 v1.5: deterministic for a given key
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Signer(
        name=name,
        key=key,
        certificate=certificate,
        cert_der=der,
        cert_md5=hashlib.md5(der, usedforsecurity=False).hexdigest(),
    )


def _rsa_key(p: int, q: int) -> rsa.RSAPrivateKey:
    e = _PUBLIC_EXPONENT
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(e, p * q),
    )
    return numbers.private_key()


class _Stream:
    """SHA-256 in counter mode: a reproducible stream of bits for key derivation."""

    __slots__ = ("_counter", "_seed")

    def __init__(self, seed: bytes) -> None:
        self._seed = hashlib.sha256(seed).digest()
        self._counter = 0

    def bits(self, n: int) -> int:
        out = b""
        while len(out) * 8 < n:
            self._counter += 1
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
        return int.from_bytes(out, "big") >> (len(out) * 8 - n)


def _prime(stream: _Stream, bits: int) -> int:
    """A random `bits`-bit prime with its two top bits set (so p*q has exactly 2*bits bits)."""
    while True:
        candidate = stream.bits(bits) | (0b11 << (bits - 2)) | 1
        if (candidate - 1) % _PUBLIC_EXPONENT == 0:
            continue
        if math.gcd(candidate, _SMALL_PRIMES_PRODUCT) != 1:
            continue
        if _probably_prime(candidate, stream):
            return candidate


def _probably_prime(n: int, stream: _Stream) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(_MILLER_RABIN_ROUNDS):
        a = 2 + stream.bits(64) % (n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True
