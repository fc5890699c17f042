"""Credentials: hashing of keys, passwords and tokens, and who a request is (§2).

API keys, access tokens and device tokens are high-entropy random strings: stored as sha256.
Passwords are stored with scrypt (n=2**14, r=8, p=1, 16-byte salt) as `scrypt$n$r$p$salt$hash`
(hex), so a hash carries its own cost; the older `scrypt$salt$hash` verifies as n=2**14, r=8,
p=1. Only tests ask `hash_password` for a lower n; nothing in the server or its CLI can.
Resolved API keys are cached in memory (keys are never revoked while the server runs); access
tokens are cached until they expire or are revoked by logout through this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from server.clock import Clock
from server.errors import Unauthorized
from server.store import devices, sites
from server.store.db import Database

PASSWORD_COST = 2**14  # scrypt n of every hash the server writes
_R, _P, _DKLEN = 8, 1, 32
_MAX_N = 2**17  # stored costs above this are refused rather than computed (128 MiB at r=8)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    maxmem = 128 * r * (n + 2 + p) + 2**20  # what OpenSSL needs, whose default cap is 32 MiB
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=maxmem)


def hash_password(password: str, *, cost: int = PASSWORD_COST) -> str:
    """`scrypt$n$r$p$salt$hash` with n=`cost` (a power of two; tests pass a tiny one)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, cost, _R, _P)
    return f"scrypt${cost}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    parts = stored.split("$")
    try:
        if len(parts) == 3:  # before the cost was stored
            n, r, p = PASSWORD_COST, _R, _P
        elif len(parts) == 6:
            n, r, p = (int(value) for value in parts[1:4])
        else:
            return False
        salt, digest = bytes.fromhex(parts[-2]), bytes.fromhex(parts[-1])
    except ValueError:
        return False
    if parts[0] != "scrypt" or not 1 < n <= _MAX_N or n & (n - 1):
        return False
    if not (0 < r <= 32 and 0 < p <= 16):
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)


@dataclass(frozen=True, slots=True)
class Site:
    uuid: str
    name: str


@dataclass(frozen=True, slots=True)
class User:
    uuid: str
    site_uuid: str
    email: str


@dataclass(frozen=True, slots=True)
class Session:
    user_uuid: str
    site_uuid: str
    email: str
    expires: int


class Authenticator:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._sites: dict[str, Site] = {}
        self._sessions: dict[str, Session] = {}
        self._devices: dict[str, tuple[str, str]] = {}  # token hash -> (device, site)
        self._device_tokens: dict[str, str] = {}  # device -> token hash

    async def site_for_key(self, key: str | None) -> Site:
        if not key:
            raise Unauthorized("X-API-Key header is missing")
        key_hash = hash_secret(key)
        site = self._sites.get(key_hash)
        if site is None:
            found = await sites.site_for_key(self.db, key_hash)
            if found is None:
                raise Unauthorized("X-API-Key is not a key of any site")
            site = self._sites[key_hash] = Site(*found)
        return site

    async def user_for_login(self, email: str, password: str) -> User:
        """The account of `email` if `password` is its password; 40100 otherwise (the same
        answer for an unknown email, so that it reveals nothing). scrypt runs off the loop."""
        row = await sites.load_user(self.db, email)
        valid = row is not None and await asyncio.get_running_loop().run_in_executor(
            None, verify_password, password, row["password_hash"]
        )
        if row is None or not valid:
            raise Unauthorized("wrong email or password")
        return User(row["uuid"], row["site_uuid"], row["email"])

    async def session(self, token: str) -> Session:
        token_hash = hash_secret(token)
        now = self.clock.now_ms()
        session = self._sessions.get(token_hash)
        if session is None:
            row = await sites.token(self.db, token_hash)
            if row is None or row["revoked"]:
                raise Unauthorized("access token is unknown or revoked; log in again")
            session = Session(row["user_uuid"], row["site_uuid"], row["email"], row["expires"])
            self._sessions[token_hash] = session
        if session.expires <= now:
            self._sessions.pop(token_hash, None)
            raise Unauthorized("access token has expired; log in again")
        return session

    async def device_for_token(self, token: str, site_uuid: str) -> str:
        """The uuid of the device holding `token` in the site; 40100 when revoked or unknown."""
        token_hash = hash_secret(token)
        found = self._devices.get(token_hash)
        if found is None:
            found = await devices.device_by_token(self.db, token_hash)
            if found is not None:
                self._devices[token_hash] = found
                self._device_tokens[found[0]] = token_hash
        if found is None or found[1] != site_uuid:
            raise Unauthorized("device token is unknown or revoked; register again")
        return found[0]

    def forget_devices(self, device_uuids: list[str]) -> None:
        """Drop cached device tokens (revoked by a re-save or a new registration)."""
        for device_uuid in device_uuids:
            token_hash = self._device_tokens.pop(device_uuid, None)
            if token_hash is not None:
                self._devices.pop(token_hash, None)

    def forget(self, token: str) -> None:
        self._sessions.pop(hash_secret(token), None)
