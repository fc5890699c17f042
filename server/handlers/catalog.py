"""Apps and OTA images (§4): upload, all, find.

Upload pipeline: stream to a temp file (size-limited) -> parse in the upload-parser worker ->
one write transaction (server.store.catalog: duplicate checks, blob into place, file and
app/image rows). Re-uploading identical bytes returns the existing object; for apps the same
package and versionCode with other bytes is 40900; an unsigned APK is 40001 (Android would
refuse it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from server.context import services_of
from server.domain import ota_info
from server.domain.filenames import check_display_name
from server.domain.paging import parse_page_request
from server.errors import InvalidField
from server.handlers.request import Handler, admin, session, site
from server.handlers.uploads import Upload, form_bool, read_upload
from server.services.upload_parsers import Parsed
from server.store import catalog
from server.store.catalog import NewUpload
from server.wire import ok, paged, render_app, render_ota


def _name(upload: Upload) -> str:
    """The `name` field (checked: server.domain.filenames), else the stored file name."""
    return check_display_name(upload.fields.get("name", "")) or upload.file.file_name


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


def _new_upload(request: web.Request, upload: Upload, info: dict[str, Any]) -> NewUpload:
    user = session(request)
    return NewUpload(
        site_uuid=site(request).uuid,
        sha256=upload.file.sha256,
        length=upload.file.length,
        file_name=upload.file.file_name,
        info=info,
        name=_name(upload),
        enable=form_bool(upload.fields, "enable", True),
        user_uuid=user.user_uuid if user else None,
        now=services_of(request).clock.now_ms(),
    )


async def _parsed(
    upload: Upload, parse: Callable[[Path], Awaitable[Parsed]], what: str
) -> dict[str, Any]:
    meta, error = await parse(upload.file.temp_path)
    if meta is None:
        error = error.replace(upload.file.temp_path.name, upload.file.file_name)
        raise InvalidField(f"file: not a valid {what}: {error}")
    return meta


@admin
async def upload_app(request: web.Request) -> web.Response:
    services = services_of(request)
    blobs = services.blobs
    upload = await read_upload(request, frozenset({"name", "enable"}))
    try:
        meta = await _parsed(upload, services.upload_parsers.apk, "APK")
        if not meta["cert_md5"]:
            raise InvalidField(
                f"file: {upload.file.file_name} is not signed; Android refuses unsigned APKs"
            )
        new = _new_upload(request, upload, _app_info(meta))
        row = await catalog.add_app(services.db, new, lambda: blobs.commit(upload.file))
    finally:
        blobs.discard(upload.file)  # gone already when the write moved it into place
    return ok(render_app(row))


@admin
async def upload_ota(request: web.Request) -> web.Response:
    services = services_of(request)
    blobs = services.blobs
    upload = await read_upload(request, frozenset({"name", "enable", "otaInfo"}))
    try:
        meta = await _parsed(upload, services.upload_parsers.ota, "OTA package")
        info = ota_info.merge_form(ota_info.from_metadata(meta), upload.fields.get("otaInfo"))
        new = _new_upload(request, upload, info)
        row = await catalog.add_ota(services.db, new, lambda: blobs.commit(upload.file))
    finally:
        blobs.discard(upload.file)
    return ok(render_ota(row))


def _all(listing: catalog.Listing, render: Callable[[Any], dict[str, Any]]) -> Handler:
    """GET .../all: every object of the caller's site, oldest first."""

    @admin
    async def handler(request: web.Request) -> web.Response:
        rows = await catalog.all_rows(services_of(request).db, listing, site(request).uuid)
        return ok([render(r) for r in rows], size=len(rows))

    return handler


def _find(listing: catalog.Listing, render: Callable[[Any], dict[str, Any]]) -> Handler:
    """GET .../find: one page, filtered and sorted by the listing's keys (§1 paging)."""

    @admin
    async def handler(request: web.Request) -> web.Response:
        page = parse_page_request(
            request.query,
            sortable=frozenset(listing.sortable),
            filterable=frozenset(listing.filters),
        )
        db = services_of(request).db
        rows, total = await catalog.find_rows(db, listing, site(request).uuid, page)
        return paged([render(r) for r in rows], total=total, size=page.size)

    return handler


all_apps = _all(catalog.APPS, render_app)
find_apps = _find(catalog.APPS, render_app)
all_otas = _all(catalog.OTAS, render_ota)
find_otas = _find(catalog.OTAS, render_ota)
