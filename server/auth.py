"""Credentials: hashing of keys, passwords and tokens, and who a request is (§2).

API keys, access tokens and device tokens are high-entropy random strings: stored as sha256 (of
their UTF-8 with surrogates passed through, so raw bytes in a header are just an unknown key).
Passwords are stored with scrypt (n=2**14, r=8, p=1, 16-byte salt) as `scrypt$n$r$p$salt$hash`
(hex), so a hash carries its own cost; the older `scrypt$salt$hash` verifies as n=2**14, r=8,
p=1. Only tests ask `hash_password` for a lower n; nothing in the server or its CLI can.
Resolved API keys are cached in memory (keys are never revoked while the server runs); access
tokens are cached until they expire or are revoked by logout through this process.

Logins (issue 12), in this order:
- Failed logins are limited per client address (LOGIN_ADDRESS_BURST, LOGIN_ADDRESS_PER_S) and
  per email, known or not (LOGIN_EMAIL_BURST, LOGIN_EMAIL_PER_S), in token buckets of
  server.domain.ratelimit (LOGIN_TRACKED_KEYS each) on the server's clock: 429 42900 with
  Retry-After. A token is taken from both before the password is checked and given back when
  it was right or nothing was checked: only wrong passwords count, so an enrolling fleet that
  logs in with one admin account is never throttled. The client address is the TCP peer
  (`X-Forwarded-For` only from --trusted-proxy peers, see server.domain.ratelimit).
- scrypt runs on `HashPool`, threads of its own (LOGIN_HASH_WORKERS), never the default
  executor that file reads use; at most LOGIN_HASH_QUEUE logins are hashing or waiting, the
  next is 503 50300 with Retry-After: 1.
- An unknown email is checked against DUMMY_HASH (the cost every stored hash has): the answer
  and its time are those of a wrong password.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from server.clock import Clock
from server.domain.ratelimit import TokenBuckets, limit_key, retry_after_s
from server.errors import RateLimited, Unauthorized, Unavailable
from server.limits import (
    LOGIN_ADDRESS_BURST,
    LOGIN_ADDRESS_PER_S,
    LOGIN_EMAIL_BURST,
    LOGIN_EMAIL_PER_S,
    LOGIN_HASH_QUEUE,
    LOGIN_HASH_WORKERS,
    LOGIN_TRACKED_KEYS,
)
from server.store import devices, sites
from server.store.db import Database

PASSWORD_COST = 2**14  # scrypt n of every hash the server writes
_R, _P, _DKLEN = 8, 1, 32
_MAX_N = 2**17  # stored costs above this are refused rather than computed (128 MiB at r=8)
# What an unknown email's password is checked against: the work of a real check, never a match
# (no password's scrypt is all zeros).
DUMMY_HASH = f"scrypt${PASSWORD_COST}${_R}${_P}${'00' * 16}${'00' * _DKLEN}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    maxmem = 128 * r * (n + 2 + p) + 2**20  # what OpenSSL needs, whose default cap is 32 MiB
    secret = password.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=maxmem)


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


Verify = Callable[[str, str], bool]


class HashPool:
    """Password checks on threads of their own, at most `queue` of them running or waiting."""

    def __init__(self, *, workers: int = LOGIN_HASH_WORKERS, queue: int = LOGIN_HASH_QUEUE) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="login-hash")
        self._slots = threading.BoundedSemaphore(queue)

    async def run(self, verify: Verify, password: str, stored: str) -> bool:
        """`verify(password, stored)` on the pool; Unavailable (503) when it is full. A slot is
        freed when the check ends, even if the request waiting for it went away."""
        if not self._slots.acquire(blocking=False):
            raise Unavailable("too many logins are being checked; retry shortly", retry_after=1)
        try:
            future = self._pool.submit(verify, password, stored)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[bool]) -> None:
        self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Authenticator:
    def __init__(self, db: Database, clock: Clock, *, verify: Verify = verify_password) -> None:
        self.db = db
        self.clock = clock
        self.verify = verify  # the seam tests count calls through
        self.hashes = HashPool()
        self.by_address = TokenBuckets(
            burst=LOGIN_ADDRESS_BURST, per_s=LOGIN_ADDRESS_PER_S, max_keys=LOGIN_TRACKED_KEYS
        )
        self.by_email = TokenBuckets(
            burst=LOGIN_EMAIL_BURST, per_s=LOGIN_EMAIL_PER_S, max_keys=LOGIN_TRACKED_KEYS
        )
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

    async def user_for_login(self, email: str, password: str, address: str) -> User:
        """The account of `email` if `password` is its password; 40100 otherwise (the same
        answer, for the same work, for an unknown email). 429 while `address` or `email` has
        failed too often; 503 while the hash pool is full."""
        now = self.clock.now_ms() / 1000
        by_address, by_email = limit_key(address), email.lower()
        wait = self.by_address.take(by_address, now)
        if wait:
            seconds = retry_after_s(wait)
            raise RateLimited(
                f"too many failed logins from this address; retry in {seconds} s",
                retry_after=seconds,
            )
        wait = self.by_email.take(by_email, now)
        if wait:
            self.by_address.give_back(by_address, now)
            seconds = retry_after_s(wait)
            raise RateLimited(
                f"too many failed logins for this email; retry in {seconds} s",
                retry_after=seconds,
            )
        try:
            row = await sites.load_user(self.db, email)
            stored = DUMMY_HASH if row is None else row["password_hash"]
            valid = await self.hashes.run(self.verify, password, stored)
        except BaseException:  # nothing was checked: the attempt costs nothing
            self.by_address.give_back(by_address, now)
            self.by_email.give_back(by_email, now)
            raise
        if row is None or not valid:
            raise Unauthorized("wrong email or password")
        self.by_address.give_back(by_address, now)
        self.by_email.give_back(by_email, now)
        return User(row["uuid"], row["site_uuid"], row["email"])

    def close(self) -> None:
        self.hashes.close()

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
