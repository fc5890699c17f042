"""`/portal/V1/auth`, `token-verify`, `logout` (§2).

Decisions [ours]: emails are unique across the database and compared case-insensitively; an
`X-API-Key` sent with the login must be a key of the account's site (otherwise 40100, as for a
wrong password, so that the response reveals nothing); tokens live `token_ttl_s` seconds.
"""

from __future__ import annotations

import sqlite3

from aiohttp import web

from server.auth import hash_secret, new_secret, verify_password
from server.context import admin, caller, ctx, in_thread, json_body, public, session
from server.domain.validation import Fields, expect_object
from server.errors import InvalidField, Unauthorized
from server.store import sites
from server.wire import ok


@public
async def login(request: web.Request) -> web.Response:
    c = ctx(request)
    body = Fields(expect_object(await json_body(request)))
    kind = body.string("type", default="email")
    if kind != "email":
        raise InvalidField(f"type: only 'email' logins are supported, not {kind!r}")
    email = body.string("email", required=True, allow_empty=False, max_len=320).strip()
    password = body.string("password", required=True, allow_empty=False, max_len=1024)
    user = await c.db.read(sites.user_by_email, email)
    valid = user is not None and await in_thread(verify_password, password, user["password_hash"])
    if user is None or not valid:
        raise Unauthorized("wrong email or password")
    key = request.headers.get("X-API-Key")
    if key:
        key_site = await c.auth.site_for_key(key)
        if key_site.uuid != user["site_uuid"]:
            raise Unauthorized("wrong email or password")
    token = new_secret()
    now = c.clock.now_ms()
    expires = now + c.config.token_ttl_s * 1000

    def write(conn: sqlite3.Connection) -> None:
        sites.purge_expired_tokens(conn, now)  # expired tokens are of no use: drop them here
        sites.add_token(conn, hash_secret(token), user["uuid"], user["site_uuid"], expires)

    await c.db.write(write)
    return ok({"access_token": token, "token_type": "Bearer", "expires_in": c.config.token_ttl_s})


@admin
async def token_verify(request: web.Request) -> web.Response:
    current = session(request)
    assert current is not None
    remaining = max(0, (current.expires - ctx(request).clock.now_ms()) // 1000)
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
    c = ctx(request)
    token = caller(request).bearer
    assert token is not None
    await c.db.write(sites.revoke_token, hash_secret(token))
    c.auth.forget(token)
    return ok(None, has_data=False)
