"""`/portal/V1/auth`, `token-verify`, `logout` (§2).

Decisions [ours]: emails are unique across the database and compared case-insensitively; an
`X-API-Key` sent with the login must be a key of the account's site (otherwise 40100, as for a
wrong password, so that the response reveals nothing); tokens live `token_ttl_s` seconds.
Failed logins are limited per client address and per email (server.auth); the client address
is the TCP peer, or the `X-Forwarded-For` hop a --trusted-proxy peer names (never the header of
an untrusted peer, which anyone can write).
"""

from __future__ import annotations

from aiohttp import web

from server.auth import hash_secret, new_secret
from server.context import services_of
from server.domain.ratelimit import client_address
from server.domain.validation import Fields, expect_object
from server.errors import InvalidField, Unauthorized
from server.handlers.request import admin, caller, json_body, public, session
from server.store import sites
from server.wire import ok


@public
async def login(request: web.Request) -> web.Response:
    services = services_of(request)
    body = Fields(expect_object(await json_body(request)))
    kind = body.string("type", default="email")
    if kind != "email":
        raise InvalidField(f"type: only 'email' logins are supported, not {kind!r}")
    email = body.string("email", required=True, allow_empty=False, max_len=320).strip()
    password = body.string("password", required=True, allow_empty=False, max_len=1024)
    address = client_address(
        request.remote,
        request.headers.getall("X-Forwarded-For", []),
        services.config.trusted_proxies,
    )
    user = await services.auth.user_for_login(email, password, address)
    key = request.headers.get("X-API-Key")
    if key:
        key_site = await services.auth.site_for_key(key)
        if key_site.uuid != user.site_uuid:
            raise Unauthorized("wrong email or password")
    token = new_secret()
    now = services.clock.now_ms()
    ttl_s = services.config.token_ttl_s
    await sites.issue_token(
        services.db, hash_secret(token), user.uuid, user.site_uuid, now + ttl_s * 1000, now
    )
    return ok({"access_token": token, "token_type": "Bearer", "expires_in": ttl_s})


@admin
async def token_verify(request: web.Request) -> web.Response:
    current = session(request)
    assert current is not None
    remaining = max(0, (current.expires - services_of(request).clock.now_ms()) // 1000)
    return ok(
        {
            "valid": True,
            "email": current.email,
            "userUuid": current.user_uuid,
            "siteUuid": current.site_uuid,
            "expires_in": remaining,
        }
    )


@admin
async def logout(request: web.Request) -> web.Response:
    services = services_of(request)
    token = caller(request).bearer
    assert token is not None
    await sites.revoke_token(services.db, hash_secret(token))
    services.auth.forget(token)
    return ok(None, has_data=False)
