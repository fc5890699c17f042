"""§2: login, token verify, logout, API keys, site selection and cross-site credentials."""

from __future__ import annotations

import aiohttp
import pytest

from server.clock import FixedClock
from tests.helpers import Client, Server


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
