"""The services and settings the app builds once (`server.app` wires them), as handlers reach them.

`Services` is a plain typed container, nothing more: the types it names are imported for the
type checker only, so this module depends on no other server module at run time and a handler
imports just what it uses. Request helpers (caller, JSON body, auth marks) are in
`server.handlers.request`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from server.auth import Authenticator
    from server.blobs import BlobStore
    from server.clock import Clock
    from server.config import ServerConfig
    from server.services.checkins import Checkins
    from server.services.hub import Hub
    from server.services.scopes import ScopeCache
    from server.services.upload_parsers import UploadParsers
    from server.services.wakes import WakeScheduler
    from server.store.db import Database


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    config: ServerConfig
    clock: Clock
    db: Database
    blobs: BlobStore
    auth: Authenticator
    hub: Hub
    scopes: ScopeCache
    checkins: Checkins
    wakes: WakeScheduler
    upload_parsers: UploadParsers

    def __post_init__(self) -> None:
        # The blob store's start-up clean-up (blobs.prepare) reads which blobs are referenced.
        self.blobs.attach(self.db)


SERVICES = web.AppKey("services", Services)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]
