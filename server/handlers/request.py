"""What handlers read from a request: who called (set by the auth middleware), the JSON body,
and the mark that tells the auth middleware which credentials a handler needs.

Structural checks (server.api): `validation_middleware` (after the auth middleware) checks the
query and path parameters of the matched route's operation before its handler runs;
`json_body` checks the parsed body against the operation's body schema before returning it.
A route that is not in the operation table is not checked. Limits: the body's size is
`max_json_bytes` (ServerConfig); its shape's limits are listed in server.api.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.api.operations import AuthKind
from server.api.validate import Checks, checks_for
from server.auth import Session, Site
from server.context import services_of
from server.domain.validation import parse_json
from server.errors import TooLarge

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request, set by the auth middleware."""

    site: Site
    session: Session | None = None
    bearer: str | None = None
    device_uuid: str | None = None


CALLER = web.RequestKey("caller", Caller)


def auth_kind(kind: AuthKind) -> Callable[[Handler], Handler]:
    """Mark a handler with the credentials it needs; the auth middleware reads the mark."""

    def mark(handler: Handler) -> Handler:
        handler.auth_kind = kind  # type: ignore[attr-defined]
        return handler

    return mark


public = auth_kind("public")
site_key = auth_kind("key")
admin = auth_kind("admin")
device = auth_kind("device")
file_access = auth_kind("file")


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def site(request: web.Request) -> Site:
    return request[CALLER].site


def session(request: web.Request) -> Session | None:
    return request[CALLER].session


def operation_checks(request: web.Request) -> Checks | None:
    """The compiled checks of the operation the request was routed to, if it has one."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return checks_for(request.method, resource.canonical)


@web.middleware
async def validation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    checks = operation_checks(request)
    if checks is not None:
        checks.check_params(request.query, request.match_info)
    return await handler(request)


async def json_body(request: web.Request) -> Any:
    limit = services_of(request).config.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(
            f"request body of {request.content_length} bytes is over the limit of {limit}"
        )
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw.extend(chunk)
        if len(raw) > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
    value = parse_json(bytes(raw))
    checks = operation_checks(request)
    if checks is not None:
        checks.check_body(value)
    return value
