"""Uploaded files, apps and OTA images of a site (§4).

A file row is one upload of one site; its bytes live in the content-addressed blob store, so
two sites uploading the same bytes share the blob but not the row. An app's and an image's id
is its `fileUuid`. Adding an upload is one transaction: identical bytes already in the site
return the existing object; for apps the same package and versionCode with other bytes is
40900; otherwise the blob is moved into place, then the file and app/image rows are written.
A blob moved into place by a transaction that never committed (a kill -9) is an orphan that
`referenced_blobs` does not list: server.blobs removes it at the next start.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.domain.paging import PageRequest
from server.errors import Conflict
from server.store.db import reads, writes
from server.store.query import FilterSpec, fetch_page

FILE_COLUMNS = "uuid, site_uuid, sha256, length, file_name, content_type, created"


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """How one kind of catalog object is read: its rows joined to their files (`alias` names
    the object's table), the columns selected, and the filter and sort keys of its `find`."""

    table: str
    alias: str
    columns: str
    filters: Mapping[str, FilterSpec]
    sortable: Mapping[str, str]


APPS = Listing(
    table="apps a JOIN files f ON f.uuid = a.file_uuid",
    alias="a",
    columns=(
        "a.file_uuid, a.site_uuid, a.package_name, a.version_code, a.name, a.enable, "
        "a.user_uuid, a.app_info, a.extra, a.registered_at, a.last_updated, f.sha256, f.length, "
        "f.file_name, f.created AS file_created"
    ),
    filters={
        "appInfo.packageName": FilterSpec("a.package_name"),
        "appInfo.versionCode": FilterSpec("a.version_code", "int"),
        "name": FilterSpec("a.name"),
        "enable": FilterSpec("a.enable", "bool"),
        "fileUuid": FilterSpec("a.file_uuid"),
    },
    sortable={
        "registeredAt": "a.registered_at",
        "lastUpdated": "a.last_updated",
        "name": "a.name",
        "appInfo.packageName": "a.package_name",
        "appInfo.versionCode": "a.version_code",
    },
)
OTAS = Listing(
    table="otas o JOIN files f ON f.uuid = o.file_uuid",
    alias="o",
    columns=(
        "o.file_uuid, o.site_uuid, o.name, o.enable, o.user_uuid, o.ota_info, o.extra, "
        "o.registered_at, o.last_updated, f.sha256, f.length, f.file_name, "
        "f.created AS file_created"
    ),
    filters={
        "otaInfo.deviceId": FilterSpec("o.device_id"),
        "otaInfo.type": FilterSpec("o.type"),
        "otaInfo.postBuild": FilterSpec("o.post_build"),
        "name": FilterSpec("o.name"),
        "enable": FilterSpec("o.enable", "bool"),
        "fileUuid": FilterSpec("o.file_uuid"),
    },
    sortable={
        "registeredAt": "o.registered_at",
        "lastUpdated": "o.last_updated",
        "name": "o.name",
        "otaInfo.postBuild": "o.post_build",
    },
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    uuid: str
    sha256: str
    length: int
    file_name: str
    content_type: str


def insert_file(conn: sqlite3.Connection, site_uuid: str, file: StoredFile, now: int) -> None:
    conn.execute(
        f"INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (file.uuid, site_uuid, file.sha256, file.length, file.file_name, file.content_type, now),
    )


def referenced_blobs(conn: sqlite3.Connection) -> set[str]:
    """The sha256 of every blob some file row of some site references (start-up clean-up)."""
    return {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM files")}


@reads
def get_file(conn: sqlite3.Connection, site_uuid: str, file_uuid: str) -> StoredFile | None:
    row = conn.execute(
        f"SELECT {FILE_COLUMNS} FROM files WHERE site_uuid = ? AND uuid = ?", (site_uuid, file_uuid)
    ).fetchone()
    if row is None:
        return None
    return StoredFile(
        uuid=row["uuid"],
        sha256=row["sha256"],
        length=row["length"],
        file_name=row["file_name"],
        content_type=row["content_type"],
    )


def _one(
    conn: sqlite3.Connection, listing: Listing, site_uuid: str, where: str, value: str
) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {listing.columns} FROM {listing.table} "
        f"WHERE {listing.alias}.site_uuid = ? AND {where} = ?",
        (site_uuid, value),
    ).fetchone()
    return row


def by_sha(
    conn: sqlite3.Connection, listing: Listing, site_uuid: str, sha256: str
) -> sqlite3.Row | None:
    return _one(conn, listing, site_uuid, "f.sha256", sha256)


def by_uuid(
    conn: sqlite3.Connection, listing: Listing, site_uuid: str, file_uuid: str
) -> sqlite3.Row | None:
    return _one(conn, listing, site_uuid, f"{listing.alias}.file_uuid", file_uuid)


def app_by_version(
    conn: sqlite3.Connection, site_uuid: str, package: str, version_code: int
) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {APPS.columns} FROM {APPS.table} WHERE a.site_uuid = ? AND a.package_name = ? "
        "AND a.version_code = ?",
        (site_uuid, package, version_code),
    ).fetchone()
    return row


def insert_app(
    conn: sqlite3.Connection,
    site_uuid: str,
    *,
    file_uuid: str,
    info: dict[str, Any],
    name: str,
    enable: bool,
    user_uuid: str | None,
    now: int,
) -> None:
    conn.execute(
        "INSERT INTO apps (file_uuid, site_uuid, package_name, version_code, name, enable, "
        "user_uuid, app_info, extra, registered_at, last_updated) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{}', ?, ?)",
        (
            file_uuid,
            site_uuid,
            info["packageName"],
            info["versionCode"],
            name,
            int(enable),
            user_uuid,
            json.dumps(info),
            now,
            now,
        ),
    )


def insert_ota(
    conn: sqlite3.Connection,
    site_uuid: str,
    *,
    file_uuid: str,
    info: dict[str, Any],
    name: str,
    enable: bool,
    user_uuid: str | None,
    now: int,
) -> None:
    conn.execute(
        "INSERT INTO otas (file_uuid, site_uuid, name, enable, user_uuid, ota_info, extra, "
        "device_id, type, post_build, registered_at, last_updated) "
        "VALUES (?, ?, ?, ?, ?, ?, '{}', ?, ?, ?, ?, ?)",
        (
            file_uuid,
            site_uuid,
            name,
            int(enable),
            user_uuid,
            json.dumps(info),
            info.get("deviceId") or "",
            info.get("type") or "base",
            info.get("postBuild") or "",
            now,
            now,
        ),
    )


@reads
def all_rows(conn: sqlite3.Connection, listing: Listing, site_uuid: str) -> list[sqlite3.Row]:
    """Every object of the site, oldest first."""
    return conn.execute(
        f"SELECT {listing.columns} FROM {listing.table} WHERE {listing.alias}.site_uuid = ? "
        f"ORDER BY {listing.alias}.registered_at, {listing.alias}.rowid",
        (site_uuid,),
    ).fetchall()


@reads
def find_rows(
    conn: sqlite3.Connection, listing: Listing, site_uuid: str, request: PageRequest
) -> tuple[list[sqlite3.Row], int]:
    """One page of the site's objects, filtered and sorted by `listing`'s keys."""
    return fetch_page(
        conn,
        table=listing.table,
        columns=listing.columns,
        site_uuid=site_uuid,
        request=request,
        filters=listing.filters,
        sortable=listing.sortable,
        default_sort=f"{listing.alias}.registered_at",
        site_column=f"{listing.alias}.site_uuid",
        rowid=f"{listing.alias}.rowid",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NewUpload:
    """An upload that passed parsing and validation, ready for the writer."""

    site_uuid: str
    sha256: str
    length: int
    file_name: str
    info: dict[str, Any]
    name: str
    enable: bool
    user_uuid: str | None
    now: int


APK_TYPE = "application/vnd.android.package-archive"
OTA_TYPE = "application/zip"


@writes
def add_app(
    conn: sqlite3.Connection, new: NewUpload, place_blob: Callable[[], object]
) -> sqlite3.Row:
    """The app of these bytes, stored unless the site has them; `place_blob` moves the bytes
    into place (in this transaction's thread, before the rows are written)."""
    same = by_sha(conn, APPS, new.site_uuid, new.sha256)
    if same is not None:
        return same
    package, version = new.info["packageName"], new.info["versionCode"]
    clash = app_by_version(conn, new.site_uuid, package, version)
    if clash is not None:
        raise Conflict(
            f"file: {package} versionCode {version} exists already with other content "
            f"(fileUuid {clash['file_uuid']}); raise versionCode"
        )
    return _store_new(conn, new, place_blob, APK_TYPE, insert_app, APPS)


@writes
def add_ota(
    conn: sqlite3.Connection, new: NewUpload, place_blob: Callable[[], object]
) -> sqlite3.Row:
    same = by_sha(conn, OTAS, new.site_uuid, new.sha256)
    if same is not None:
        return same
    return _store_new(conn, new, place_blob, OTA_TYPE, insert_ota, OTAS)


def _store_new(
    conn: sqlite3.Connection,
    new: NewUpload,
    place_blob: Callable[[], object],
    content_type: str,
    insert: Callable[..., None],
    listing: Listing,
) -> sqlite3.Row:
    """Blob into place, then the file row and the app/image row, then read it back."""
    place_blob()
    stored = StoredFile(
        uuid=str(uuid.uuid4()),
        sha256=new.sha256,
        length=new.length,
        file_name=new.file_name,
        content_type=content_type,
    )
    insert_file(conn, new.site_uuid, stored, new.now)
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
    row = by_uuid(conn, listing, new.site_uuid, stored.uuid)
    assert row is not None
    return row


@reads
def enabled_otas(
    conn: sqlite3.Connection, site_uuid: str, file_uuids: Sequence[str]
) -> list[sqlite3.Row]:
    """The enabled images of the site among `file_uuids`, in that order."""
    rows = (by_uuid(conn, OTAS, site_uuid, u) for u in file_uuids)
    return [r for r in rows if r is not None and r["enable"]]


def missing(
    conn: sqlite3.Connection, table: str, site_uuid: str, uuids: Iterable[str]
) -> list[str]:
    """Those of `uuids` with no row in `table` ('apps' or 'otas') of the site, in order."""
    wanted = list(uuids)
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    column = "uuid" if table == "device_groups" else "file_uuid"
    found = {
        r[0]
        for r in conn.execute(
            f"SELECT {column} FROM {table} WHERE site_uuid = ? AND {column} IN ({marks})",
            (site_uuid, *wanted),
        )
    }
    return [u for u in wanted if u not in found]
