"""Profiles: create, edit with the stale-update check, reads, scope resolution, status counts and
the wakeToApply profiles with the devices they would wake.

Saving a profile checks in the same transaction that the apps, images and groups it names exist
in the site (40001 naming the first missing one) and saves the serials of `scope.device` that are
not devices yet (no existing device is reset).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from server.domain.groups import with_descendants
from server.domain.paging import PageRequest
from server.domain.profiles import ProfileInput, next_updated, wakes_to_apply
from server.errors import Conflict, InvalidField, NotFound
from server.store.catalog import missing
from server.store.db import reads, writes
from server.store.devices import register_serials
from server.store.groups import parent_map
from server.store.query import FilterSpec, fetch_page

PROFILE_COLUMNS = (
    "p.uuid, p.site_uuid, p.name, p.enabled, p.is_global, p.writer_uuid, p.doc, p.created, "
    "p.updated, u.email AS writer_email"
)
_TABLE = "profiles p LEFT JOIN users u ON u.uuid = p.writer_uuid"
FILTERS = {
    "name": FilterSpec("p.name"),
    "profile.name": FilterSpec("p.name"),
    "enabled": FilterSpec("p.enabled", "bool"),
    "isGlobal": FilterSpec("p.is_global", "bool"),
    "uuid": FilterSpec("p.uuid"),
}
SORTABLE = {
    "created": "p.created",
    "updated": "p.updated",
    "name": "p.name",
    "profile.name": "p.name",
}
PROGRESS_STATES = ("pending", "deferred", "applying", "applied", "failed")


def insert_profile(
    conn: sqlite3.Connection, site_uuid: str, profile: ProfileInput, writer: str | None, now: int
) -> str:
    new_uuid = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO profiles (uuid, site_uuid, name, enabled, is_global, writer_uuid, doc, "
        "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new_uuid,
            site_uuid,
            profile.name,
            int(profile.enabled),
            int(profile.is_global),
            writer,
            json.dumps(profile.doc),
            now,
            now,
        ),
    )
    return new_uuid


def find_profile(conn: sqlite3.Connection, site_uuid: str, profile_uuid: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {PROFILE_COLUMNS} FROM {_TABLE} WHERE p.site_uuid = ? AND p.uuid = ?",
        (site_uuid, profile_uuid),
    ).fetchone()
    return row


def get_profile(conn: sqlite3.Connection, site_uuid: str, profile_uuid: str) -> sqlite3.Row:
    row = find_profile(conn, site_uuid, profile_uuid)
    if row is None:
        raise NotFound(f"uuid: no profile {profile_uuid!r} in this site")
    return row


load_profile = reads(get_profile)


def _check_references(conn: sqlite3.Connection, site_uuid: str, profile: ProfileInput) -> None:
    checks = (
        ("apps", profile.app_uuids, "apps.install[].uuid", "app"),
        ("otas", profile.ota_uuids, "otas[]", "OTA image"),
        ("device_groups", profile.group_uuids, "scope.group[]", "device group"),
    )
    for table, uuids, field, what in checks:
        absent = missing(conn, table, site_uuid, uuids)
        if absent:
            raise InvalidField(
                f"{field}: no {what} {absent[0]!r} in this site"
                + ("; upload it before naming it in a profile" if table != "device_groups" else "")
            )


@writes
def create_profile(
    conn: sqlite3.Connection, site_uuid: str, profile: ProfileInput, writer: str | None, now: int
) -> str:
    """Check the references, save new serials, insert the profile; its uuid."""
    _check_references(conn, site_uuid, profile)
    register_serials(conn, site_uuid, profile.device_serials, now)
    return insert_profile(conn, site_uuid, profile, writer, now)


@writes
def update_profile(
    conn: sqlite3.Connection,
    site_uuid: str,
    profile_uuid: str,
    profile: ProfileInput,
    loaded_updated: int,
    writer: str | None,
    now: int,
) -> sqlite3.Row:
    """40400 for an unknown profile (before the references are checked), then as create, with
    the stale-update check; the profile as stored."""
    get_profile(conn, site_uuid, profile_uuid)
    _check_references(conn, site_uuid, profile)
    register_serials(conn, site_uuid, profile.device_serials, now)
    edit_profile(conn, site_uuid, profile_uuid, profile, loaded_updated, writer, now)
    return get_profile(conn, site_uuid, profile_uuid)


def edit_profile(
    conn: sqlite3.Connection,
    site_uuid: str,
    profile_uuid: str,
    profile: ProfileInput,
    loaded_updated: int,
    writer: str | None,
    now: int,
) -> None:
    current = get_profile(conn, site_uuid, profile_uuid)
    if current["updated"] != loaded_updated:
        raise Conflict(
            f"profile {profile_uuid!r} was changed at {current['updated']} since it was loaded "
            f"(updated {loaded_updated}); load it again and re-apply the edit"
        )
    updated = next_updated(now, current["updated"])
    conn.execute(
        "UPDATE profiles SET name = ?, enabled = ?, is_global = ?, writer_uuid = ?, doc = ?, "
        "updated = ? WHERE uuid = ?",
        (
            profile.name,
            int(profile.enabled),
            int(profile.is_global),
            writer,
            json.dumps(profile.doc),
            updated,
            profile_uuid,
        ),
    )


@reads
def all_profiles(conn: sqlite3.Connection, site_uuid: str) -> list[sqlite3.Row]:
    return conn.execute(
        f"SELECT {PROFILE_COLUMNS} FROM {_TABLE} WHERE p.site_uuid = ? ORDER BY p.created, p.rowid",
        (site_uuid,),
    ).fetchall()


@reads
def find_profiles(
    conn: sqlite3.Connection, site_uuid: str, request: PageRequest
) -> tuple[list[sqlite3.Row], int]:
    return fetch_page(
        conn,
        table=_TABLE,
        columns=PROFILE_COLUMNS,
        site_uuid=site_uuid,
        request=request,
        filters=FILTERS,
        sortable=SORTABLE,
        default_sort="p.created",
        site_column="p.site_uuid",
        rowid="p.rowid",
    )


def _scope_clause(
    conn: sqlite3.Connection, site_uuid: str, doc: dict[str, Any]
) -> tuple[str, list[Any]]:
    """SQL over `devices d` selecting the devices in the profile's scope (§5)."""
    if doc.get("isGlobal"):
        return "d.site_uuid = ?", [site_uuid]
    scope = doc.get("scope") or {}
    serials = list(scope.get("device") or [])
    groups = sorted(with_descendants(scope.get("group") or [], parent_map(conn, site_uuid)))
    parts: list[str] = []
    params: list[Any] = [site_uuid]
    if serials:
        parts.append(f"d.serial_no IN ({','.join('?' * len(serials))})")
        params.extend(serials)
    if groups:
        parts.append(f"d.group_uuid IN ({','.join('?' * len(groups))})")
        params.extend(groups)
    if not parts:
        return "0", []
    return f"d.site_uuid = ? AND ({' OR '.join(parts)})", params


def scoped_devices(
    conn: sqlite3.Connection, site_uuid: str, profile_uuid: str, doc: dict[str, Any]
) -> list[sqlite3.Row]:
    """The devices a profile covers now (scope minus unscopeIfApplied exclusions)."""
    where, params = _scope_clause(conn, site_uuid, doc)
    return conn.execute(
        "SELECT d.uuid, d.serial_no, d.group_uuid, d.last_checked_in, d.interval_s, d.sleeping, "
        f"d.wake_sent FROM devices d WHERE {where} AND d.uuid NOT IN "
        "(SELECT device_uuid FROM profile_exclusions WHERE profile_uuid = ?)",
        (*params, profile_uuid),
    ).fetchall()


@reads
def status(
    conn: sqlite3.Connection, site_uuid: str, profile_uuid: str, page: int, size: int
) -> tuple[dict[str, int], list[sqlite3.Row], int]:
    """Counts per progress state over the scoped devices, and one page of per-device rows."""
    row = get_profile(conn, site_uuid, profile_uuid)
    where, params = _scope_clause(conn, site_uuid, json.loads(row["doc"]))
    joined = (
        "FROM devices d LEFT JOIN profile_progress pp "
        f"ON pp.device_uuid = d.uuid AND pp.profile_uuid = ? WHERE {where}"
    )
    counts = dict.fromkeys(PROGRESS_STATES, 0)
    for state, count in conn.execute(
        f"SELECT COALESCE(pp.status, 'pending'), COUNT(*) {joined} GROUP BY 1",
        (profile_uuid, *params),
    ):
        counts[state if state in counts else "applying"] += int(count)
    scoped = sum(counts.values())
    rows = conn.execute(
        "SELECT d.uuid AS device_uuid, d.serial_no, COALESCE(pp.status, 'pending') AS status, "
        f"COALESCE(pp.reason, '') AS reason, pp.updated AS updated {joined} "
        "ORDER BY d.serial_no LIMIT ? OFFSET ?",
        (profile_uuid, *params, size, page * size),
    ).fetchall()
    return {"scoped": scoped, **counts}, rows, scoped


@reads
def wake_profiles(conn: sqlite3.Connection) -> list[tuple[str, str, dict[str, Any]]]:
    """(site, uuid, doc) of every enabled wakeToApply profile."""
    rows = conn.execute("SELECT site_uuid, uuid, doc FROM profiles WHERE enabled = 1").fetchall()
    found = []
    for site_uuid, profile_uuid, raw in rows:
        doc = json.loads(raw)
        if wakes_to_apply(doc):
            found.append((site_uuid, profile_uuid, doc))
    return found


@reads
def wake_candidates(
    conn: sqlite3.Connection, site_uuid: str, profile_uuid: str
) -> list[sqlite3.Row]:
    """The devices the profile covers now, if it still is an enabled wakeToApply profile."""
    row = conn.execute(
        "SELECT doc, enabled FROM profiles WHERE uuid = ? AND site_uuid = ?",
        (profile_uuid, site_uuid),
    ).fetchone()
    if row is None or not row["enabled"]:
        return []
    doc = json.loads(row["doc"])
    if not wakes_to_apply(doc):
        return []
    return scoped_devices(conn, site_uuid, profile_uuid, doc)
