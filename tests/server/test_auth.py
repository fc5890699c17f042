"""§2: login, token verify, logout, API keys, site selection and cross-site credentials."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from server.auth import hash_password, verify_password
from server.bootstrap import create_site
from server.clock import FixedClock
from server.config import SeedSite
from server.store import sites
from server.store.db import Database
from tests.helpers import TEST_PASSWORD_COST, Client, Server, fixed_clock


async def test_login_verify_logout(server: Server, http: aiohttp.ClientSession) -> None:
    """A login yields a bearer token that verifies, and logout revokes it."""
    site = server.sites["alpha"]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    verify = await client.get("/portal/V1/auth/token-verify")
    assert verify.status == 200
    assert verify.data["email"] == site.email and verify.data["siteUuid"] == site.uuid
    assert verify.data["expires_in"] == 86400
    assert (await client.get("/portal/V1/logout")).status == 200
    after = await client.get("/portal/V1/auth/token-verify")
    assert (after.status, after.code) == (401, 40100)
    assert (await client.get("/ota/api/device/group/all")).code == 40100


async def test_logout_survives_restart(server: Server, http: aiohttp.ClientSession) -> None:
    """A revoked token stays revoked after a restart (the revocation is stored, not cached)."""
    site = server.sites["alpha"]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    await client.get("/portal/V1/logout")
    await server.restart()
    client.base = server.base
    assert (await client.get("/ota/api/device/group/all")).code == 40100


async def test_login_email_is_case_insensitive(server: Server, http: aiohttp.ClientSession) -> None:
    """Emails compare case-insensitively."""
    site = server.sites["alpha"]
    client = Client(http, server.base, site.key)
    await client.login(site.email.upper(), site.password)
    assert (await client.get("/ota/api/device/group/all")).status == 200


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (
            {"email": "admin@alpha.test", "password": "wrong", "type": "email"},
            401,
            40100,
            "wrong email or password",
        ),
        (
            {"email": "nobody@alpha.test", "password": "pw-alpha"},
            401,
            40100,
            "wrong email or password",
        ),
        ({"password": "pw-alpha"}, 400, 40001, "email"),
        ({"email": "admin@alpha.test"}, 400, 40001, "password"),
        ({"email": 5, "password": "x"}, 400, 40001, "email: must be a string"),
        ({"email": "admin@alpha.test", "password": "pw-alpha", "type": "sms"}, 400, 40001, "type"),
    ],
)
async def test_bad_logins(
    server: Server,
    http: aiohttp.ClientSession,
    body: dict[str, object],
    status: int,
    code: int,
    needle: str,
) -> None:
    """Wrong credentials are 40100 without saying which part was wrong; bad fields are 40001."""
    client = Client(http, server.base, None)
    reply = await client.post("/portal/V1/auth", body)
    assert (reply.status, reply.code) == (status, code)
    assert needle in reply.body["message"]
    assert server.sql("SELECT COUNT(*) AS n FROM access_tokens")[0]["n"] == 0


async def test_login_with_another_sites_key_fails(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """Logging in to alpha's account with beta's API key is 40100."""
    client = Client(http, server.base, server.sites["beta"].key)
    reply = await client.post(
        "/portal/V1/auth", {"email": "admin@alpha.test", "password": "pw-alpha"}
    )
    assert reply.code == 40100


async def test_admin_call_needs_key_and_token(server: Server, admin: Client) -> None:
    """Missing key, unknown key, missing token, unknown token and a device scheme are all 40100."""
    variants = [
        Client(admin.http, server.base, None, admin.token),
        Client(admin.http, server.base, "no-such-key", admin.token),
        Client(admin.http, server.base, admin.key, None),
        Client(admin.http, server.base, admin.key, "forged-token"),
        Client(admin.http, server.base, admin.key, admin.token, scheme="Device"),
    ]
    for client in variants:
        reply = await client.get("/ota/api/device/group/all")
        assert (reply.status, reply.code) == (401, 40100), client
        assert reply.body["message"]


async def test_token_of_other_site_with_own_key_fails(admin: Client, other: Client) -> None:
    """Beta's token with alpha's key is 40100: credentials must belong to one site."""
    mixed = Client(admin.http, admin.base, admin.key, other.token)
    assert (await mixed.get("/ota/api/device/group/all")).code == 40100


async def test_token_expires(server: Server, admin: Client, clock: FixedClock) -> None:
    """A token older than its lifetime is 40100 (the clock is injected)."""
    assert (await admin.get("/ota/api/device/group/all")).status == 200
    clock.advance(86400 + 1)
    reply = await admin.get("/ota/api/device/group/all")
    assert reply.code == 40100 and "expired" in reply.body["message"]


async def test_site_selection_by_query(server: Server, admin: Client) -> None:
    """siteUuid/siteId naming the caller's own site work; naming another site is 40300."""
    alpha, beta = server.sites["alpha"], server.sites["beta"]
    assert (await admin.get("/ota/api/device/group/all", siteUuid=alpha.uuid)).status == 200
    assert (await admin.get("/ota/api/device/group/all", siteId="alpha")).status == 200
    for params in ({"siteUuid": beta.uuid}, {"siteId": "beta"}, {"siteUuid": "unknown"}):
        reply = await admin.get("/ota/api/device/group/all", **params)
        assert (reply.status, reply.code) == (403, 40300)


# Written by the server before hashes carried their cost (scrypt n=2**14, r=8, p=1).
LEGACY_HASH = (
    "scrypt$e18f366d44f4382d2773ad85a0d06710"
    "$456be4a6da63d27418b68fc2cbdf5c3b41c8933e06008fc2af8e4ad46ffcbd29"
)


def test_new_password_hashes_have_production_cost() -> None:
    """By default a hash is scrypt n=2**14, r=8, p=1 with a 16-byte salt, and says so."""
    stored = hash_password("pw")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(digest)) == 32
    assert verify_password("pw", stored) and not verify_password("pW", stored)


def test_created_sites_get_production_cost(tmp_path: Path) -> None:
    """create_site hashes the admin password at production cost unless told otherwise."""
    db = Database(tmp_path / "db.sqlite")
    try:
        db.migrate()
        create_site(db, SeedSite(name="prod", admin_password="pw"), fixed_clock())
        user = db.read_sync(sites.user_by_email, "admin@prod.local")
    finally:
        db.close()
    assert user is not None
    stored = user["password_hash"]
    assert stored.startswith("scrypt$16384$8$1$") and verify_password("pw", stored)


def test_old_format_hashes_still_verify() -> None:
    """`scrypt$salt$hash` from before the cost was stored verifies as n=2**14, r=8, p=1."""
    assert verify_password("old-format-pw", LEGACY_HASH)
    assert not verify_password("old-format-pW", LEGACY_HASH)


def test_cheap_cost_is_stored_in_the_hash() -> None:
    """A cost given for tests is kept in the hash, so verifying it is as cheap."""
    stored = hash_password("pw", cost=2**4)
    assert stored.startswith("scrypt$16$8$1$")
    assert verify_password("pw", stored) and not verify_password("pW", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "scrypt$aa",
        "bcrypt$aa$bb",
        "scrypt$15$8$1$aa$bb",  # n not a power of two
        "scrypt$x$8$1$aa$bb",
        "scrypt$16$8$1$zz$bb",
        f"scrypt${2**30}$8$1$aa$bb",  # beyond any cost we write: refused, not computed
    ],
)
def test_malformed_hashes_never_verify(stored: str) -> None:
    """A stored value that is not a hash we write never verifies, and never raises."""
    assert not verify_password("pw", stored)


async def test_fixture_sites_are_cheap_to_log_in(server: Server, admin: Client) -> None:
    """Test sites hash at TEST_PASSWORD_COST (set-up speed), and log in with it."""
    hashes = [row[0] for row in server.sql("SELECT password_hash FROM users")]
    assert len(hashes) == 2
    assert all(h.startswith(f"scrypt${TEST_PASSWORD_COST}$") for h in hashes)
    assert (await admin.get("/portal/V1/auth/token-verify")).status == 200
