"""What every handler reaches through `request.app[CTX]`: settings, store, blobs, auth, clock.

Also the small request helpers handlers share: the JSON body, the caller's site, the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from server.auth import Authenticator, Session, Site
from server.blobs import BlobStore
from server.checkins import Checkins
from server.clock import Clock
from server.config import ServerConfig
from server.domain.validation import parse_json
from server.errors import TooLarge
from server.hub import Hub
from server.scopes import ScopeCache
from server.store.db import Database
from server.wakes import WakeScheduler

AuthKind = Literal["public", "key", "admin", "device", "file"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Context:
    config: ServerConfig
    db: Database
    blobs: BlobStore
    auth: Authenticator
    clock: Clock
    hub: Hub
    scopes: ScopeCache
    checkins: Checkins
    wakes: WakeScheduler
    parser_pool: Executor | None = None  # started on the first upload, unless given
    owns_parser_pool: bool = True  # False: given by the caller, who shuts it down


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request, set by the auth middleware."""

    site: Site
    session: Session | None = None
    bearer: str | None = None
    device_uuid: str | None = None


CTX = web.AppKey("ctx", Context)
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


def ctx(request: web.Request) -> Context:
    return request.app[CTX]


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def site(request: web.Request) -> Site:
    return request[CALLER].site


def session(request: web.Request) -> Session | None:
    return request[CALLER].session


async def json_body(request: web.Request) -> Any:
    limit = ctx(request).config.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(
            f"request body of {request.content_length} bytes is over the limit of {limit}"
        )
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw.extend(chunk)
        if len(raw) > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
    return parse_json(bytes(raw))


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
