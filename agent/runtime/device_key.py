"""The device's own key (§7): an Ed25519 key made at first enrollment, and where it is kept.

A rig keeps it in the state dir as `device_key.pem` (PKCS#8 PEM, mode 0600, written atomically
off the event loop), apart from state.json: a state file moved away (or a lost token) leaves the
key, so the device proves it is the same device and gets a new token. A key file that cannot be
read is a StateError naming it: the agent never replaces a key silently (the server would then
refuse it until an admin re-saves the device). The key is made from 32 bytes of the OS's
randomness, never from the agent's seeded rng.

Simulated devices (the memory state store: thousands of agents a process) keep nothing: their
key is derived from the serial and the device's own seed when one is needed (`DerivedKeyStore`:
two slots an agent), so a seeded run replays, and it is not a secret. Two simulated devices that
share a serial (twins, scenarios/duplicate-serials.toml) have keys of their own, as two devices
in the field do: the second to register is refused, never merged with the first.

`HeldKey.fresh` says the key was just made (or, for a derived key, not used yet by this agent):
the enrollment flow then registers without a challenge, since no server can hold it yet (and
falls back to a challenge if the server says a key is bound). `cryptography` is imported only
when a key is used, never by `import agent.runtime.agent`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from agent.errors import StateError
from agent.runtime.files import submit, write_atomic
from agent.runtime.state import FileStateStore, StateStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILE = "device_key.pem"
SEED_BYTES = 32
_DERIVED_LABEL = b"midm-fleet simulated device key\x00"
log = structlog.get_logger("agent.device_key")


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """An Ed25519 private key, held as its 32-byte seed (all a simulated agent would keep)."""

    seed: bytes

    def _private(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def public_pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM (register's `publicKey`)."""
        from cryptography.hazmat.primitives import serialization

        public = self._private().public_key()
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def fingerprint(self) -> str:
        """Hex SHA-256 of the DER SubjectPublicKeyInfo: the server's `keyFingerprint`."""
        from cryptography.hazmat.primitives import serialization

        der = (
            self._private()
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return hashlib.sha256(der).hexdigest()

    def sign(self, data: bytes) -> bytes:
        return self._private().sign(data)

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._private().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(secrets.token_bytes(SEED_BYTES))

    @classmethod
    def from_pem(cls, data: bytes) -> DeviceKey:
        """The key of a PKCS#8 PEM file; ValueError saying why it is not an Ed25519 key."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not an unencrypted private key PEM ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{type(key).__name__}, not an Ed25519 key")
        return cls(key.private_bytes_raw())


@dataclass(frozen=True, slots=True)
class HeldKey:
    key: DeviceKey
    fresh: bool  # just made: no server can hold it yet


class KeyStore(Protocol):
    """Where the device's key lives: a file on a rig, nothing at all in the simulator."""

    async def load_or_create(self, serial: str) -> HeldKey:
        """The device's key, made now if it has none; StateError if it cannot be kept."""
        ...


class FileKeyStore:
    """`<state dir>/device_key.pem`, read or made on the writer thread."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / KEY_FILE

    async def load_or_create(self, serial: str) -> HeldKey:
        return await submit(self._load_or_create)

    def _load_or_create(self) -> HeldKey:  # on the writer thread
        key = self.load()
        if key is None:
            return HeldKey(self._create(), fresh=True)
        return HeldKey(key, fresh=False)

    def load(self) -> DeviceKey | None:
        """The key kept here, None when there is none yet; StateError if it cannot be read."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            key = DeviceKey.from_pem(data)
        except ValueError as exc:
            raise StateError(
                f"{self.path} is not this device's key: {exc}. Restore it, or move it away and "
                "ask an admin to save the device again (device/save) so that a new key is bound"
            ) from exc
        if self.path.stat().st_mode & 0o077:
            log.warning("device_key.too_open", path=str(self.path), wanted="0600")
        return key

    def _create(self) -> DeviceKey:
        key = DeviceKey.generate()
        try:
            write_atomic(self.path, key.private_pem(), mode=0o600)
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror}") from exc
        log.info("device_key.created", path=str(self.path), fingerprint=key.fingerprint())
        return key


class DerivedKeyStore:
    """A simulated device's key, derived from its serial and `salt` (the device's seed) when
    needed (module doc)."""

    __slots__ = ("_salt", "_used")

    def __init__(self, salt: int = 0) -> None:
        self._salt = salt
        self._used = False

    async def load_or_create(self, serial: str) -> HeldKey:
        salt = (self._salt & (2**64 - 1)).to_bytes(8, "big")
        name = serial.encode("utf-8", "surrogatepass")
        seed = hashlib.sha256(_DERIVED_LABEL + salt + name).digest()
        fresh, self._used = not self._used, True
        return HeldKey(DeviceKey(seed), fresh=fresh)


def key_store_for(state_store: StateStore) -> KeyStore:
    """The key's home beside the state: the state dir of a FileStateStore, else derived."""
    if isinstance(state_store, FileStateStore):
        return FileKeyStore(state_store.folder)
    return DerivedKeyStore()
