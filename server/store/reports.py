"""What devices reported: app inventory, app status and the event log (read side, §3)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from server.domain.paging import PageRequest
from server.store.db import reads
from server.store.query import FilterSpec, fetch_page

EVENT_COLUMNS = "id, device_uuid, profile_uuid, at, received, kind, target, status, reason, doc"
LOG_FILTERS = {
    "kind": FilterSpec("kind"),
    "status": FilterSpec("status"),
    "deviceUuid": FilterSpec("device_uuid"),
    "profileUuid": FilterSpec("profile_uuid"),
}
LOG_FILTERABLE = frozenset({*LOG_FILTERS, "forWhat"})  # forWhat: find_events
LOG_SORTABLE = {"at": "at", "received": "received"}


def inventory(conn: sqlite3.Connection, device_uuid: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT category, apps, reported FROM app_inventory WHERE device_uuid = ?", (device_uuid,)
    ).fetchone()
    return row


def app_status(conn: sqlite3.Connection, device_uuid: str, package: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT version_code, installed, updated FROM app_status "
        "WHERE device_uuid = ? AND package_name = ?",
        (device_uuid, package),
    ).fetchone()
    return row


@reads
def find_events(
    conn: sqlite3.Connection, site_uuid: str, for_what: str | None, request: PageRequest
) -> tuple[list[sqlite3.Row], int]:
    """Events of the site; with `for_what`, those of that device or that profile."""
    request = replace(request, filters={k: v for k, v in request.filters.items() if k != "forWhat"})
    extra = (
        None if for_what is None else ("device_uuid = ? OR profile_uuid = ?", [for_what, for_what])
    )
    return fetch_page(
        conn,
        table="events",
        columns=EVENT_COLUMNS,
        site_uuid=site_uuid,
        request=request,
        filters=LOG_FILTERS,
        sortable=LOG_SORTABLE,
        default_sort="at",
        extra=extra,
    )
