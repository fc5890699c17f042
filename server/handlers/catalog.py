"""Apps and OTA images (§4): upload, all, find.

Upload pipeline: stream to a temp file (size-limited) -> parse in the worker process -> in the
writer thread: check for duplicates, move the blob into place, write the file and app/image rows.
Re-uploading identical bytes returns the existing object; for apps the same package and
versionCode with other bytes is 40900; an unsigned APK is 40001 (Android would refuse it).
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.blobs import BlobStore, Received
from server.context import admin, ctx, session, site
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


@dataclass(frozen=True, slots=True, kw_only=True)
class NewObject:
    """An upload that passed parsing and validation, ready for the writer."""

    site_uuid: str
    upload: Upload
    info: dict[str, Any]
    name: str
    enable: bool
    user_uuid: str | None
    now: int


def _stored_file(received: Received, content_type: str) -> StoredFile:
    return StoredFile(
        uuid=str(uuid.uuid4()),
        sha256=received.sha256,
        length=received.length,
        file_name=received.file_name,
        content_type=content_type,
    )


def _app_info(meta: dict[str, Any]) -> dict[str, Any]:
    """AppInfo from the parsed APK; size and date fields are device facts, null here [ours]."""
    return {
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


def _insert_app(conn: sqlite3.Connection, blobs: BlobStore, new: NewObject) -> sqlite3.Row:
    """Writer thread: duplicate and conflict checks, blob into place, then the rows."""
    same = catalog.app_by_sha(conn, new.site_uuid, new.upload.file.sha256)
    if same is not None:
        return same
    package, version = new.info["packageName"], new.info["versionCode"]
    clash = catalog.app_by_version(conn, new.site_uuid, package, version)
    if clash is not None:
        raise Conflict(
            f"file: {package} versionCode {version} exists already with other content "
            f"(fileUuid {clash['file_uuid']}); raise versionCode"
        )
    return _store_new(conn, blobs, new, APK_TYPE, catalog.insert_app, catalog.app_by_uuid)


def _insert_ota(conn: sqlite3.Connection, blobs: BlobStore, new: NewObject) -> sqlite3.Row:
    same = catalog.ota_by_sha(conn, new.site_uuid, new.upload.file.sha256)
    if same is not None:
        return same
    return _store_new(conn, blobs, new, "application/zip", catalog.insert_ota, catalog.ota_by_uuid)


def _store_new(
    conn: sqlite3.Connection,
    blobs: BlobStore,
    new: NewObject,
    content_type: str,
    insert: Callable[..., None],
    load: Callable[[sqlite3.Connection, str, str], sqlite3.Row | None],
) -> sqlite3.Row:
    """Blob into place, then the file row and the app/image row, then read it back."""
    blobs.commit(new.upload.file)
    stored = _stored_file(new.upload.file, content_type)
    catalog.insert_file(conn, new.site_uuid, stored, new.now)
    insert(
        conn,
        new.site_uuid,
        file_uuid=stored.uuid,
        info=new.info,
        name=new.name,
        enable=new.enable,
        user_uuid=new.user_uuid,
        now=new.now,
    )
    row = load(conn, new.site_uuid, stored.uuid)
    assert row is not None
    return row


def _new_object(request: web.Request, upload: Upload, info: dict[str, Any]) -> NewObject:
    user = session(request)
    return NewObject(
        site_uuid=site(request).uuid,
        upload=upload,
        info=info,
        name=_name(upload),
        enable=form_bool(upload.fields, "enable", True),
        user_uuid=user.user_uuid if user else None,
        now=ctx(request).clock.now_ms(),
    )


async def _parsed(
    request: web.Request, upload: Upload, worker: Callable[[str], Any], what: str
) -> Any:
    meta, error = await _parse(request, worker, str(upload.file.temp_path))
    if meta is None:
        error = error.replace(upload.file.temp_path.name, upload.file.file_name)
        raise InvalidField(f"file: not a valid {what}: {error}")
    return meta


@admin
async def upload_app(request: web.Request) -> web.Response:
    c = ctx(request)
    upload = await read_upload(request, frozenset({"name", "enable"}))
    try:
        meta = await _parsed(request, upload, apk_worker, "APK")
        if not meta["cert_md5"]:
            raise InvalidField(
                f"file: {upload.file.file_name} is not signed; Android refuses unsigned APKs"
            )
        new = _new_object(request, upload, _app_info(meta))
        row = await c.db.write(_insert_app, c.blobs, new)
    finally:
        c.blobs.discard(upload.file)  # gone already when the write moved it into place
    return ok(render_app(row))


@admin
async def upload_ota(request: web.Request) -> web.Response:
    c = ctx(request)
    upload = await read_upload(request, frozenset({"name", "enable", "otaInfo"}))
    try:
        meta = await _parsed(request, upload, ota_worker, "OTA package")
        info = ota_info.merge_form(ota_info.from_metadata(meta), upload.fields.get("otaInfo"))
        new = _new_object(request, upload, info)
        row = await c.db.write(_insert_ota, c.blobs, new)
    finally:
        c.blobs.discard(upload.file)
    return ok(render_ota(row))


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
