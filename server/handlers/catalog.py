"""Apps and OTA images (§4): upload, all, find.

Upload pipeline: stream to a temp file (size-limited) -> parse in the worker process -> check for
duplicates -> move the blob into place -> one transaction writes the file and app/image rows.
Re-uploading identical bytes returns the existing object; for apps the same package and
versionCode with other bytes is 40900; an unsigned APK is 40001 (Android would refuse it).
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from server.blobs import Received
from server.context import admin, ctx, in_thread, session, site
from server.domain import ota_info
from server.domain.paging import parse_page_request
from server.errors import Conflict, InvalidField
from server.handlers.uploads import Upload, form_bool, read_upload
from server.parsing import apk_worker, new_parser_pool, ota_worker
from server.store import catalog
from server.store.catalog import StoredFile
from server.wire import ok, paged, render_app, render_ota

APK_TYPE = "application/vnd.android.package-archive"


async def _parse(request: web.Request, worker: Callable[[str], Any], path: str) -> Any:
    c = ctx(request)
    if c.parser_pool is None:
        c.parser_pool = new_parser_pool()
    return await asyncio.get_running_loop().run_in_executor(c.parser_pool, worker, path)


def _name(upload: Upload) -> str:
    name = upload.fields.get("name", "").strip() or upload.file.file_name
    if len(name) > 256:
        raise InvalidField("name: longer than 256 characters")
    return name


def _stored_file(received: Received, content_type: str) -> StoredFile:
    return StoredFile(
        uuid=str(uuid.uuid4()),
        sha256=received.sha256,
        length=received.length,
        file_name=received.file_name,
        content_type=content_type,
    )


@admin
async def upload_app(request: web.Request) -> web.Response:
    c = ctx(request)
    site_uuid = site(request).uuid
    user = session(request)
    upload = await read_upload(request, frozenset({"name", "enable"}))
    try:
        name, enable = _name(upload), form_bool(upload.fields, "enable", True)
        meta, error = await _parse(request, apk_worker, str(upload.file.temp_path))
        if meta is None:
            error = error.replace(upload.file.temp_path.name, upload.file.file_name)
            raise InvalidField(f"file: not a valid APK: {error}")
        if not meta["cert_md5"]:
            raise InvalidField(
                f"file: {upload.file.file_name} is not signed; Android refuses unsigned APKs"
            )
        existing = await c.db.read(catalog.app_by_sha, site_uuid, upload.file.sha256)
        if existing is not None:
            return ok(render_app(existing))
        app_info = {
            "packageName": meta["package_name"],
            "label": meta["label"],
            "versionCode": meta["version_code"],
            "versionName": meta["version_name"],
            "minSdkVersion": meta["min_sdk_version"],
            "targetSdkVersion": meta["target_sdk_version"],
            "maxSdkVersion": meta["max_sdk_version"],
            "certMd5": meta["cert_md5"],
            "appSize": None,
            "dataSize": None,
            "firstInstalled": None,
            "lastUpdated": None,
        }
        stored = _stored_file(upload.file, APK_TYPE)
    except BaseException:
        c.blobs.discard(upload.file)
        raise

    def write(conn: sqlite3.Connection) -> sqlite3.Row:
        same = catalog.app_by_sha(conn, site_uuid, stored.sha256)
        if same is not None:
            return same
        clash = catalog.app_by_version(
            conn, site_uuid, app_info["packageName"], app_info["versionCode"]
        )
        if clash is not None:
            raise Conflict(
                f"file: {app_info['packageName']} versionCode {app_info['versionCode']} exists "
                f"already with other content (fileUuid {clash['file_uuid']}); raise versionCode"
            )
        now = c.clock.now_ms()
        catalog.insert_file(conn, site_uuid, stored, now)
        catalog.insert_app(
            conn,
            site_uuid,
            file_uuid=stored.uuid,
            app_info=app_info,
            name=name,
            enable=enable,
            user_uuid=user.user_uuid if user else None,
            now=now,
        )
        row = catalog.app_by_uuid(conn, site_uuid, stored.uuid)
        assert row is not None
        return row

    return ok(render_app(await _commit_and_write(request, upload.file, write)))


async def _commit_and_write(
    request: web.Request, received: Received, write: Callable[[sqlite3.Connection], sqlite3.Row]
) -> sqlite3.Row:
    """Blob first, then rows: a row never names a missing blob (an orphan blob is harmless)."""
    c = ctx(request)
    try:
        await in_thread(c.blobs.commit, received)
    except BaseException:
        c.blobs.discard(received)
        raise
    row: sqlite3.Row = await c.db.write(write)
    return row


@admin
async def upload_ota(request: web.Request) -> web.Response:
    c = ctx(request)
    site_uuid = site(request).uuid
    user = session(request)
    upload = await read_upload(request, frozenset({"name", "enable", "otaInfo"}))
    try:
        name, enable = _name(upload), form_bool(upload.fields, "enable", True)
        meta, error = await _parse(request, ota_worker, str(upload.file.temp_path))
        if meta is None:
            error = error.replace(upload.file.temp_path.name, upload.file.file_name)
            raise InvalidField(f"file: not a valid OTA package: {error}")
        info = ota_info.merge_form(ota_info.from_metadata(meta), upload.fields.get("otaInfo"))
        existing = await c.db.read(catalog.ota_by_sha, site_uuid, upload.file.sha256)
        if existing is not None:
            return ok(render_ota(existing))
        stored = _stored_file(upload.file, "application/zip")
    except BaseException:
        c.blobs.discard(upload.file)
        raise

    def write(conn: sqlite3.Connection) -> sqlite3.Row:
        same = catalog.ota_by_sha(conn, site_uuid, stored.sha256)
        if same is not None:
            return same
        now = c.clock.now_ms()
        catalog.insert_file(conn, site_uuid, stored, now)
        catalog.insert_ota(
            conn,
            site_uuid,
            file_uuid=stored.uuid,
            ota_info=info,
            name=name,
            enable=enable,
            user_uuid=user.user_uuid if user else None,
            now=now,
        )
        row = catalog.ota_by_uuid(conn, site_uuid, stored.uuid)
        assert row is not None
        return row

    return ok(render_ota(await _commit_and_write(request, upload.file, write)))


@admin
async def all_apps(request: web.Request) -> web.Response:
    rows = await ctx(request).db.read(catalog.all_apps, site(request).uuid)
    return ok([render_app(r) for r in rows], size=len(rows))


@admin
async def find_apps(request: web.Request) -> web.Response:
    page = parse_page_request(
        request.query,
        sortable=frozenset(catalog.APP_SORTABLE),
        filterable=frozenset(catalog.APP_FILTERS),
    )
    rows, total = await ctx(request).db.read(catalog.find_apps, site(request).uuid, page)
    return paged([render_app(r) for r in rows], total=total, size=page.size)


@admin
async def all_otas(request: web.Request) -> web.Response:
    rows = await ctx(request).db.read(catalog.all_otas, site(request).uuid)
    return ok([render_ota(r) for r in rows], size=len(rows))


@admin
async def find_otas(request: web.Request) -> web.Response:
    page = parse_page_request(
        request.query,
        sortable=frozenset(catalog.OTA_SORTABLE),
        filterable=frozenset(catalog.OTA_FILTERS),
    )
    rows, total = await ctx(request).db.read(catalog.find_otas, site(request).uuid, page)
    return paged([render_ota(r) for r in rows], total=total, size=page.size)
