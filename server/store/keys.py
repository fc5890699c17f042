"""Device keys' storage (§7): the bound key, the challenges used, the challenge secret.

Columns of `devices`: `public_key` (DER SubjectPublicKeyInfo) and `key_fingerprint` (its hex
SHA-256, rendered as keyFingerprint). `used_challenges` holds the nonce of every challenge a
register used until it expires (rows past expiry are deleted by the next register that uses
one): at most the registers with a proof of the last CHALLENGE_TTL_S. `server_secrets` holds
the secret challenges are MACed with, made on the first challenge a database issues.

`register` is one transaction: it re-reads the device's key, refuses (40100, nothing written)
when the key changed since the handler read it or the challenge is used already (two registers
racing with one challenge), then gives the device its new token (server.store.agent's
`set_token`, run in this same transaction), records the challenge and writes the key. `unbind`
runs inside device/save's transaction when an admin re-saves a device (server.store.devices).
This module imports no other store module at load time: devices imports it, and agent imports
devices.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from server.domain.device_keys import KeyRecord, Outcome, already_used
from server.errors import Unauthorized
from server.store.db import reads, writes

CHALLENGE_SECRET = "challenge"  # noqa: S105 - the name of a row, not a secret


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyState:
    """A device's key record (None: no such device in the site), the challenge secret (None:
    this database never issued a challenge), and whether the nonce asked about is used."""

    record: KeyRecord | None
    secret: bytes | None
    used: bool = False


def _record(conn: sqlite3.Connection, site_uuid: str, serial: str) -> KeyRecord | None:
    row = conn.execute(
        "SELECT uuid, public_key FROM devices WHERE site_uuid = ? AND serial_no = ?",
        (site_uuid, serial),
    ).fetchone()
    if row is None:
        return None
    return KeyRecord(device_uuid=row[0], key_der=None if row[1] is None else bytes(row[1]))


def _used(conn: sqlite3.Connection, nonce: bytes) -> bool:
    found = conn.execute("SELECT 1 FROM used_challenges WHERE nonce = ?", (nonce,)).fetchone()
    return found is not None


def _secret(conn: sqlite3.Connection) -> bytes | None:
    row = conn.execute(
        "SELECT value FROM server_secrets WHERE name = ?", (CHALLENGE_SECRET,)
    ).fetchone()
    return None if row is None else bytes(row[0])


@reads
def key_state(
    conn: sqlite3.Connection, site_uuid: str, serial: str, nonce: bytes | None = None
) -> KeyState:
    """One read: the device's key, the secret and (given a challenge's nonce) whether it is
    used, so a replay is refused before it reaches the writer."""
    return KeyState(
        record=_record(conn, site_uuid, serial),
        secret=_secret(conn),
        used=nonce is not None and _used(conn, nonce),
    )


@writes
def ensure_secret(conn: sqlite3.Connection, candidate: bytes, now: int) -> bytes:
    """The challenge secret; `candidate` becomes it if there is none yet."""
    conn.execute(
        "INSERT OR IGNORE INTO server_secrets (name, value, created) VALUES (?, ?, ?)",
        (CHALLENGE_SECRET, candidate, now),
    )
    secret = _secret(conn)
    assert secret is not None
    return secret


def _set_token() -> Callable[..., str | None]:
    """server.store.agent.set_token's body (a connection, not a transaction of its own), so that
    the token and the key are written in one transaction. Imported here, not at load time
    (module doc)."""
    from server.store.agent import set_token

    return cast("Callable[..., str | None]", inspect.unwrap(set_token))


@writes
def register(
    conn: sqlite3.Connection,
    site_uuid: str,
    serial: str,
    token_hash: str,
    hardware: dict[str, str],
    now: int,
    *,
    expected_key: bytes | None,
    outcome: Outcome,
) -> str | None:
    """The new token and the key of an accepted register; the device uuid, or None when the
    device does not exist (any more)."""
    record = _record(conn, site_uuid, serial)
    if record is None:
        return None
    if record.key_der != expected_key:
        raise Unauthorized(
            "the device's key changed during this register (an admin re-save or another "
            "register); ask agent/challenge again"
        )
    used = outcome.consumed
    if used is not None:
        if _used(conn, used.nonce):
            raise already_used()
        conn.execute("DELETE FROM used_challenges WHERE expires <= ?", (now,))
        conn.execute(
            "INSERT INTO used_challenges (nonce, device_uuid, expires) VALUES (?, ?, ?)",
            (used.nonce, record.device_uuid, used.expires_ms),
        )
    device_uuid = _set_token()(conn, site_uuid, serial, token_hash, hardware, now)
    if device_uuid is None:
        return None
    key = outcome.key
    conn.execute(
        "UPDATE devices SET public_key = ?, key_fingerprint = ? WHERE uuid = ?",
        (None if key is None else key.der, None if key is None else key.fingerprint, device_uuid),
    )
    return device_uuid


def unbind(conn: sqlite3.Connection, device_uuid: str) -> None:
    """Forget the device's key (an admin re-saved it): its next register binds a new one."""
    conn.execute(
        "UPDATE devices SET public_key = NULL, key_fingerprint = NULL WHERE uuid = ?",
        (device_uuid,),
    )
