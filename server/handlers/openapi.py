"""`GET /ota/api/openapi.json`: the OpenAPI 3.1 document of this server (public, no credentials).

Written once from the operation table (server.api.openapi) on the first request and served as
the same bytes after; it is the document itself, not wrapped in the envelope.
"""

from __future__ import annotations

from functools import cache

from aiohttp import web

from server.api.openapi import build_document
from server.handlers.request import public
from server.wire import dumps


@cache
def document_bytes() -> bytes:
    return dumps(build_document()).encode()


@public
async def document(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json", charset="utf-8")
