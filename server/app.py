"""The aiohttp application: the services wired once, routes, the error and auth middlewares,
start-up and clean-up.

Every response is the envelope of §1: ApiError -> its code; aiohttp's 404/405/413 -> 40400,
40500, 41300; anything else -> 50000 with a `uq` that the log line carries with the traceback
(a 5xx ApiError, a database failure say, is logged with its `uq` and cause too).
`siteUuid`/`siteId` in a query must name the caller's own site (else 40300). A body that a
handler left unread is answered and dropped by `server.bodies` (never holds a shutdown up).
Connections (caps, timeouts, aiohttp's own 400s as the envelope) are `server.listener`'s.
Every route is an operation of server.api (a test holds the two together): its query and body
shapes are checked after the auth middleware, and GET /ota/api/openapi.json serves the document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import structlog
from aiohttp import web

from server.auth import Authenticator
from server.blobs import BlobStore
from server.bodies import UnreadBodies, stalled_bodies
from server.clock import Clock, SystemClock
from server.config import ServerConfig
from server.context import SERVICES, Services, services_of
from server.errors import (
    ApiError,
    Forbidden,
    Internal,
    MethodNotAllowed,
    NotFound,
    TooLarge,
    Unauthorized,
)
from server.handlers import agent, auth, catalog, devices, files, groups, logs, openapi, profiles
from server.handlers.request import CALLER, Caller, Handler, validation_middleware
from server.services.checkins import Checkins
from server.services.hub import Hub
from server.services.scopes import ScopeCache
from server.services.upload_parsers import UploadParsers
from server.services.wakes import WakeScheduler
from server.store.db import Database
from server.wire import dumps, error_body, error_response

log = structlog.get_logger("server")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        body, uq = error_body(error)
        if error.status >= 500:
            log.error(
                "request.failed",
                method=request.method,
                path=request.path,
                code=error.code,
                uq=uq,
                error=str(error),
                cause=None if error.__cause__ is None else repr(error.__cause__),
            )
        return error_response(error, body)
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
                    "request body is over the limit of "
                    f"{services_of(request).config.max_json_bytes} bytes"
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
    authenticator = services_of(request).auth
    site = await authenticator.site_for_key(request.headers.get("X-API-Key"))
    if kind == "key":
        request[CALLER] = Caller(site)
        return await handler(request)
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    scheme = scheme.lower()
    if kind in ("admin", "file") and scheme == "bearer" and credential:
        session = await authenticator.session(credential)
        if session.site_uuid != site.uuid:
            raise Unauthorized("the access token belongs to another site than the X-API-Key")
        who = Caller(site, session=session, bearer=credential)
    elif kind in ("device", "file") and scheme == "device" and credential:
        device_uuid = await authenticator.device_for_token(credential, site.uuid)
        who = Caller(site, device_uuid=device_uuid)
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
            web.get(f"{api}/device/app/status", devices.app_status_of),
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
            web.post(f"{api}/agent/challenge", agent.challenge),
            web.post(f"{api}/agent/register", agent.register),
            web.post(f"{api}/agent/checkin", agent.checkin),
            web.put(f"{api}/agent/apps", agent.put_apps),
            web.get(f"{api}/agent/profiles", agent.get_profiles),
            web.get(f"{api}/agent/ota/next", agent.ota_next),
            web.post(f"{api}/agent/events", agent.post_events),
            web.get(f"{api}/agent/ws", agent.websocket),
            web.get(f"{api}/openapi.json", openapi.document),
        ]
    )


def build_services(
    config: ServerConfig, clock: Clock, parser_pool: Executor | None = None
) -> Services:
    """Every long-lived service of one app, built once and wired to each other here."""
    db = Database(config.db_path)
    hub = Hub()
    return Services(
        config=config,
        clock=clock,
        db=db,
        blobs=BlobStore(config.files_dir),
        auth=Authenticator(db, clock),
        hub=hub,
        scopes=ScopeCache(db),
        checkins=Checkins(db, clock, config.checkin_flush_s),
        wakes=WakeScheduler(db, hub, clock),
        upload_parsers=UploadParsers(parser_pool),
    )


def create_app(
    config: ServerConfig, *, clock: Clock | None = None, parser_pool: Executor | None = None
) -> web.Application:
    """The application for `config`; the database is migrated when the app starts.

    Uploads are parsed in `parser_pool` if given (the caller owns it: tests share one worker
    across servers), else in a worker process the app starts on the first upload and stops."""
    services = build_services(config, clock or SystemClock(), parser_pool)
    unread = UnreadBodies()
    app = web.Application(
        middlewares=[
            unread.middleware,
            error_middleware,
            stalled_bodies,
            auth_middleware,
            validation_middleware,  # server.api: query and path shapes, after credentials
        ],
        client_max_size=config.max_json_bytes,
    )
    app[SERVICES] = services
    add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services.db.migrate()
        services.blobs.prepare()
        await services.wakes.load()
        background = [
            asyncio.create_task(services.checkins.run(), name="checkin-flush"),
            asyncio.create_task(services.wakes.run(), name="wake-scheduler"),
        ]
        yield
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await services.checkins.flush()
        services.upload_parsers.close()
        services.auth.close()
        services.db.close()

    async def close_sockets(app: web.Application) -> None:
        unread.stop()
        await services.hub.close_all()

    app.on_shutdown.append(close_sockets)

    app.cleanup_ctx.append(lifecycle)
    return app
