"""Device keys (§7): public keys, challenges, proofs, and what a register may do (pure).

Theory of operation. A challenge is stateless: `issue_challenge` returns base64url (no padding)
of version (1 byte) | nonce (16) | expiry in epoch ms (8) | HMAC-SHA256 (first 16 bytes) of all
that and the site and serial, under a server secret the store keeps (server.store.keys). Issuing
one stores nothing, so a flood of challenge requests grows no memory and can evict nobody's
challenge; a challenge is good for its site and serial only, for CHALLENGE_TTL_S, and survives a
server restart (the secret is in the database). Single use: a register that uses a challenge
records its nonce until the challenge expires (server.store.keys), and a nonce recorded is
refused (40100); only accepted registers record one, so what is kept is bounded by the rate of
registers, not of challenges. The server's clock decides expiry; a challenge that seems issued
in the future (the clock stepped back) is refused too, so none lives longer than 60 s.

Register (`check_register`), with `bound` the key the device holds on the server:
- no key bound: without a proof, `publicKey` (if sent) is bound (trust on first use, §7); with a
  proof, it must verify against `publicKey`, which is then required (40001 naming it).
- a key bound: a valid proof is required (40100 otherwise: no proof, expired, another site's or
  serial's, replayed, or a signature that does not verify); `publicKey` may repeat the bound key
  and may not name another (40100: only an admin re-save of the device unbinds a key).
Refusals raise Unauthorized and write nothing: the device's current token stays valid.

Keys: SubjectPublicKeyInfo PEM (one `PUBLIC KEY` block), Ed25519 or EC P-256, anything else
40001 naming `publicKey`; the fingerprint is the hex SHA-256 of the key's DER SubjectPublicKeyInfo
(re-encoded canonically, so an EC point sent compressed has the fingerprint of its usual form).
Signatures: base64 (standard alphabet, padded) over the challenge's UTF-8 bytes; Ed25519 (64
bytes), or ECDSA with SHA-256 as DER or as raw r|s (64 bytes). [ours: what §7 leaves open]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from server.domain.validation import json_type
from server.errors import InvalidField, Unauthorized
from server.limits import (
    CHALLENGE_TTL_S,
    MAX_CHALLENGE_CHARS,
    MAX_PUBLIC_KEY_CHARS,
    MAX_SIGNATURE_CHARS,
)

CHALLENGE_VERSION = 1
NONCE_BYTES = 16
_MAC_BYTES = 16
_CHALLENGE_BYTES = 1 + NONCE_BYTES + 8 + _MAC_BYTES
_MAC_LABEL = b"midm-fleet device challenge\x00"
_BEGIN, _END = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
_ED25519_SIGNATURE = 64
_MIN_SIGNATURE, _MAX_SIGNATURE = 8, 72  # DER ECDSA P-256 signatures are at most 72 bytes
_DER, _SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
NEEDS_ADMIN = "only an admin re-save of the device (device/save) lets it bind another key"


class KeyKind(StrEnum):
    ED25519 = "Ed25519"
    P256 = "EC P-256"


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKey:
    kind: KeyKind
    der: bytes  # DER SubjectPublicKeyInfo, canonical

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Proof:
    challenge: str
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """What the store holds about one device's key."""

    device_uuid: str
    key_der: bytes | None  # the bound key, if any


@dataclass(frozen=True, slots=True, kw_only=True)
class Issued:
    text: str
    expires_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    """A challenge this server issued, as a register uses it."""

    nonce: bytes
    expires_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What an accepted register writes: the key bound after it, the challenge it used."""

    key: PublicKey | None
    consumed: Opened | None


# -- keys ------------------------------------------------------------------------------------


def _from_object(key: object, path: str) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey):
        kind, der = KeyKind.ED25519, key.public_bytes(_DER, _SPKI)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidField(
                f"{path}: an EC key on {key.curve.name} is not accepted; use Ed25519 or EC P-256"
            )
        kind, der = KeyKind.P256, key.public_bytes(_DER, _SPKI)
    else:
        name = type(key).__name__.removesuffix("PublicKey")
        raise InvalidField(f"{path}: {name} keys are not accepted; use Ed25519 or EC P-256")
    return PublicKey(kind=kind, der=der)


def parse_public_key(value: Any, path: str = "publicKey") -> PublicKey | None:
    """The key a register offers (None when absent or null); 40001 naming `path` otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(f"{path}: must be a string, not {json_type(value)}")
    if len(value) > MAX_PUBLIC_KEY_CHARS:
        raise InvalidField(f"{path}: longer than {MAX_PUBLIC_KEY_CHARS} characters")
    text = value.strip()
    if "PRIVATE KEY" in text:
        raise InvalidField(f"{path}: is a private key; send the public key only")
    if not (text.startswith(_BEGIN) and text.endswith(_END) and text.count("-----BEGIN") == 1):
        raise InvalidField(
            f"{path}: must be one SubjectPublicKeyInfo PEM block ({_BEGIN} ... {_END})"
        )
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise InvalidField(f"{path}: not a readable SubjectPublicKeyInfo PEM") from None
    return _from_object(key, path)


def load_bound(der: bytes) -> PublicKey:
    """A key the store holds (it was checked when bound)."""
    return _from_object(serialization.load_der_public_key(der), "bound key")


# -- proofs ----------------------------------------------------------------------------------


def _text(value: Any, path: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidField(f"{path}: must be a string, not {json_type(value)}")
    if len(value) > max_len:
        raise InvalidField(f"{path}: longer than {max_len} characters")
    return value


def parse_signature(value: Any, path: str = "signature") -> bytes:
    text = _text(value, path, MAX_SIGNATURE_CHARS)
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidField(f"{path}: not base64 (standard alphabet, padded)") from None
    if not _MIN_SIGNATURE <= len(raw) <= _MAX_SIGNATURE:
        raise InvalidField(
            f"{path}: {len(raw)} bytes; an Ed25519 signature is {_ED25519_SIGNATURE}, "
            f"an ECDSA P-256 one {_MIN_SIGNATURE}..{_MAX_SIGNATURE}"
        )
    return raw


def parse_proof(challenge: Any, signature: Any) -> Proof | None:
    """`challenge` and `signature` of a register body: both or neither (40001 naming the one
    missing or malformed)."""
    if challenge is None and signature is None:
        return None
    if challenge is None:
        raise InvalidField("challenge: is required with signature (from agent/challenge)")
    if signature is None:
        raise InvalidField("signature: is required with challenge")
    text = _text(challenge, "challenge", MAX_CHALLENGE_CHARS)
    return Proof(challenge=text, signature=parse_signature(signature))


def verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is `key`'s over `message` (40001 naming `signature` when its length
    cannot be one of this kind of key)."""
    public = serialization.load_der_public_key(key.der)
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            if len(signature) != _ED25519_SIGNATURE:
                raise InvalidField(
                    f"signature: {len(signature)} bytes; an Ed25519 signature is "
                    f"{_ED25519_SIGNATURE}"
                )
            public.verify(signature, message)
            return True
        assert isinstance(public, ec.EllipticCurvePublicKey)
        candidates = [signature]
        if len(signature) == 2 * 32:  # raw r|s (IEEE P1363, as WebCrypto makes)
            r, s = int.from_bytes(signature[:32]), int.from_bytes(signature[32:])
            candidates.append(encode_dss_signature(r, s))
        for candidate in candidates:
            try:
                public.verify(candidate, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return True
        return False
    except InvalidSignature:
        return False


# -- challenges ------------------------------------------------------------------------------


def _mac(secret: bytes, site_uuid: str, serial: str, body: bytes) -> bytes:
    scope = f"{site_uuid}\x00{serial}\x00".encode("utf-8", "surrogatepass")
    return hmac.new(secret, _MAC_LABEL + scope + body, hashlib.sha256).digest()[:_MAC_BYTES]


def issue_challenge(
    secret: bytes, site_uuid: str, serial: str, nonce: bytes, now_ms: int
) -> Issued:
    """A challenge for this site's `serial`, good for CHALLENGE_TTL_S from `now_ms`."""
    expires = now_ms + CHALLENGE_TTL_S * 1000
    body = bytes([CHALLENGE_VERSION]) + nonce + expires.to_bytes(8, "big")
    raw = body + _mac(secret, site_uuid, serial, body)
    return Issued(text=base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), expires_ms=expires)


def _decoded(text: str) -> bytes | None:
    """The bytes of a challenge as issued (version, nonce, expiry, MAC), unchecked."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _CHALLENGE_BYTES and raw[0] == CHALLENGE_VERSION else None


def claimed_nonce(text: str) -> bytes | None:
    """The nonce a challenge text carries, unchecked: the store looks it up among the used ones
    in the same read as the device's key (`open_challenge` decides whether it is genuine)."""
    raw = _decoded(text)
    return None if raw is None else raw[1 : 1 + NONCE_BYTES]


def open_challenge(
    secret: bytes | None, site_uuid: str, serial: str, text: str, now_ms: int
) -> Opened:
    """A challenge this server issued for this site's `serial`, and unexpired; Unauthorized
    naming what is wrong otherwise. Whether it was used already is the store's to say."""
    raw = _decoded(text)
    if secret is None or raw is None:
        raise Unauthorized("challenge: not one this server issued; ask agent/challenge")
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, site_uuid, serial, body)):
        raise Unauthorized(
            "challenge: not issued for this device (another serial or site, or altered)"
        )
    nonce = body[1 : 1 + NONCE_BYTES]
    expires = int.from_bytes(body[1 + NONCE_BYTES :], "big")
    if not expires - CHALLENGE_TTL_S * 1000 <= now_ms < expires:
        raise Unauthorized(
            f"challenge: expired (good for {CHALLENGE_TTL_S} s); ask agent/challenge again"
        )
    return Opened(nonce=nonce, expires_ms=expires)


def already_used() -> Unauthorized:
    return Unauthorized("challenge: already used; ask agent/challenge for a new one")


def check_register(
    *,
    record: KeyRecord,
    offered: PublicKey | None,
    proof: Proof | None,
    secret: bytes | None,
    site_uuid: str,
    serial: str,
    now_ms: int,
    used: bool = False,
) -> Outcome:
    """What a register may do to the device's key (module doc); raises what refuses it. `used`:
    the store holds the proof's challenge as used already."""
    bound = load_bound(record.key_der) if record.key_der is not None else None
    if proof is None:
        if bound is not None:
            raise Unauthorized(
                "this device has a bound key: register needs challenge (POST "
                "/ota/api/agent/challenge) and signature"
            )
        return Outcome(key=offered, consumed=None)
    key = bound or offered
    if key is None:
        raise InvalidField(
            "publicKey: is required with challenge and signature while no key is bound"
        )
    if key.kind is KeyKind.ED25519 and len(proof.signature) != _ED25519_SIGNATURE:
        raise InvalidField(
            f"signature: {len(proof.signature)} bytes; an Ed25519 signature is {_ED25519_SIGNATURE}"
        )
    opened = open_challenge(secret, site_uuid, serial, proof.challenge, now_ms)
    if used:
        raise already_used()
    if not verify(key, proof.signature, proof.challenge.encode("utf-8")):
        which = "the key bound to this device" if bound is not None else "publicKey"
        raise Unauthorized(f"signature: does not verify against {which}")
    if bound is not None and offered is not None and offered.der != bound.der:
        raise Unauthorized(f"publicKey: differs from the key bound to this device; {NEEDS_ADMIN}")
    return Outcome(key=key, consumed=opened)
