"""The aiohttp application: routes, the error and auth middlewares, start-up and clean-up.

Every response is the envelope of §1: ApiError -> its code; aiohttp's 404/405/413 -> 40400,
40500, 41300; anything else -> 50000 with a `uq` that the log line carries with the traceback.
`siteUuid`/`siteId` in a query must name the caller's own site (else 40300). A body that a
handler left unread is answered and dropped by `server.bodies` (never holds a shutdown up).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import structlog
from aiohttp import web

from server.auth import Authenticator
from server.blobs import BlobStore
from server.bodies import UnreadBodies
from server.checkins import Checkins
from server.clock import Clock, SystemClock
from server.config import ServerConfig
from server.context import CALLER, CTX, Caller, Context, Handler, ctx
from server.errors import (
    ApiError,
    Forbidden,
    Internal,
    MethodNotAllowed,
    NotFound,
    TooLarge,
    Unauthorized,
)
from server.handlers import agent, auth, catalog, devices, files, groups, logs, profiles
from server.hub import Hub
from server.scopes import ScopeCache
from server.store.db import Database
from server.wakes import WakeScheduler
from server.wire import dumps, error_body, error_response

log = structlog.get_logger("server")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        if error.status >= 500:
            log.error("request.failed", method=request.method, path=request.path, code=error.code)
        return error_response(error)
    except web.HTTPException as http:
        if http.status == 404:
            return error_response(NotFound(f"no such path: {request.method} {request.path}"))
        if http.status == 405:
            response = error_response(
                MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
            )
            if "Allow" in http.headers:
                response.headers["Allow"] = http.headers["Allow"]
            return response
        if http.status == 413:
            return error_response(
                TooLarge(
                    f"request body is over the limit of {ctx(request).config.max_json_bytes} bytes"
                )
            )
        if http.status < 400:
            raise
        other = ApiError(http.reason or "request failed")
        other.code, other.status = http.status * 100, http.status
        return error_response(other)
    except Exception:
        failure = Internal(
            "internal error; the server log has the details under this response's uq"
        )
        body, uq = error_body(failure)
        log.exception("request.crashed", method=request.method, path=request.path, uq=uq)
        return web.json_response(body, status=failure.status, dumps=dumps)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    kind = getattr(handler, "auth_kind", "public")
    if kind == "public":
        return await handler(request)
    c = ctx(request)
    site = await c.auth.site_for_key(request.headers.get("X-API-Key"))
    if kind == "key":
        request[CALLER] = Caller(site)
        return await handler(request)
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    scheme = scheme.lower()
    if kind in ("admin", "file") and scheme == "bearer" and credential:
        session = await c.auth.session(credential)
        if session.site_uuid != site.uuid:
            raise Unauthorized("the access token belongs to another site than the X-API-Key")
        who = Caller(site, session=session, bearer=credential)
    elif kind in ("device", "file") and scheme == "device" and credential:
        who = Caller(site, device_uuid=await c.auth.device_for_token(credential, site.uuid))
    else:
        wanted = {
            "admin": "Bearer <access_token>",
            "device": "Device <device token>",
            "file": "Bearer <access_token> or Device <device token>",
        }[kind]
        raise Unauthorized(f"Authorization header must be '{wanted}'")
    for key, value in (("siteUuid", site.uuid), ("siteId", site.name)):
        named = request.query.get(key)
        if named is not None and named != value:
            raise Forbidden(f"{key}: {named!r} is not the site of these credentials")
    request[CALLER] = who
    return await handler(request)


def add_routes(app: web.Application) -> None:
    api = "/ota/api"
    app.router.add_routes(
        [
            web.post("/portal/V1/auth", auth.login),
            web.get("/portal/V1/auth/token-verify", auth.token_verify),
            web.get("/portal/V1/logout", auth.logout),
            web.post(f"{api}/device/group/save", groups.save),
            web.get(f"{api}/device/group/all", groups.all_groups),
            web.get(f"{api}/device/group/findBy", groups.find_by),
            web.get(f"{api}/device/exists", devices.exists),
            web.post(f"{api}/device/save", devices.save),
            web.get(f"{api}/device/findBy", devices.find_by),
            web.get(f"{api}/device/find", devices.find),
            web.get(f"{api}/device/app/installed", devices.installed),
            web.get(f"{api}/device/app/status", devices.app_status),
            web.get(f"{api}/logs/find", logs.find),
            web.post(f"{api}/app/upload", catalog.upload_app),
            web.get(f"{api}/app/all", catalog.all_apps),
            web.get(f"{api}/app/find", catalog.find_apps),
            web.post(f"{api}/ota/upload", catalog.upload_ota),
            web.get(f"{api}/ota/all", catalog.all_otas),
            web.get(f"{api}/ota/find", catalog.find_otas),
            web.get(f"{api}/file/{{fileUuid}}", files.download, allow_head=False),
            web.post(f"{api}/profile/save", profiles.save),
            web.get(f"{api}/profile/all", profiles.all_profiles),
            web.get(f"{api}/profile/find", profiles.find),
            web.get(f"{api}/profile/findBy", profiles.find_by),
            web.post(f"{api}/profile/edit", profiles.edit),
            web.get(f"{api}/profile/status", profiles.status),
            web.post(f"{api}/agent/register", agent.register),
            web.post(f"{api}/agent/checkin", agent.checkin),
            web.put(f"{api}/agent/apps", agent.put_apps),
            web.get(f"{api}/agent/profiles", agent.get_profiles),
            web.get(f"{api}/agent/ota/next", agent.ota_next),
            web.post(f"{api}/agent/events", agent.post_events),
            web.get(f"{api}/agent/ws", agent.websocket),
        ]
    )


def create_app(
    config: ServerConfig, *, clock: Clock | None = None, parser_pool: Executor | None = None
) -> web.Application:
    """The application for `config`; the database is migrated when the app starts.

    Uploads are parsed in `parser_pool` if given (the caller owns it: tests share one worker
    across servers), else in a worker process the app starts on the first upload and stops."""
    clock = clock or SystemClock()
    db = Database(config.db_path)
    blobs = BlobStore(config.files_dir)
    hub = Hub()
    context = Context(
        config=config,
        db=db,
        blobs=blobs,
        auth=Authenticator(db, clock),
        clock=clock,
        hub=hub,
        scopes=ScopeCache(db),
        checkins=Checkins(db, clock, config.checkin_flush_s),
        wakes=WakeScheduler(db, hub, clock),
        parser_pool=parser_pool,
        owns_parser_pool=parser_pool is None,
    )
    unread = UnreadBodies()
    app = web.Application(
        middlewares=[unread.middleware, error_middleware, auth_middleware],
        client_max_size=config.max_json_bytes,
    )
    app[CTX] = context
    add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        db.migrate()
        blobs.prepare()
        await context.wakes.load()
        background = [
            asyncio.create_task(context.checkins.run(), name="checkin-flush"),
            asyncio.create_task(context.wakes.run(), name="wake-scheduler"),
        ]
        yield
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await context.checkins.flush()
        if context.parser_pool is not None and context.owns_parser_pool:
            context.parser_pool.shutdown(wait=True, cancel_futures=True)
        db.close()

    async def close_sockets(app: web.Application) -> None:
        unread.stop()
        await hub.close_all()

    app.on_shutdown.append(close_sockets)

    app.cleanup_ctx.append(lifecycle)
    return app
