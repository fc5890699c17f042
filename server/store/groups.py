"""Device groups: save (create or update), read, and the site's parent map for tree checks."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass

from server.domain.groups import creates_cycle
from server.errors import InvalidField, NotFound
from server.store.db import reads, writes


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupInput:
    uuid: str | None
    name: str
    enabled: bool
    parent_uuid: str | None


GROUP_COLUMNS = "uuid, site_uuid, parent_uuid, name, enabled, created, updated, device_count"


def parent_map(conn: sqlite3.Connection, site_uuid: str) -> dict[str, str | None]:
    rows = conn.execute(
        "SELECT uuid, parent_uuid FROM device_groups WHERE site_uuid = ?", (site_uuid,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def save_group(conn: sqlite3.Connection, site_uuid: str, group: GroupInput, now: int) -> str:
    parents = parent_map(conn, site_uuid)
    if group.uuid is not None and group.uuid not in parents:
        raise NotFound(f"uuid: no device group {group.uuid!r} in this site")
    if group.parent_uuid is not None:
        if group.parent_uuid not in parents:
            raise InvalidField(f"parentUuid: no device group {group.parent_uuid!r} in this site")
        if group.uuid is not None and creates_cycle(group.uuid, group.parent_uuid, parents):
            raise InvalidField(
                f"parentUuid: {group.parent_uuid!r} is {group.uuid!r} itself or one of its "
                "descendants; groups may not form a cycle"
            )
    if group.uuid is None:
        new_uuid = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO device_groups (uuid, site_uuid, parent_uuid, name, enabled, created, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (new_uuid, site_uuid, group.parent_uuid, group.name, int(group.enabled), now, now),
        )
        return new_uuid
    conn.execute(
        "UPDATE device_groups SET parent_uuid = ?, name = ?, enabled = ?, updated = ? "
        "WHERE uuid = ? AND site_uuid = ?",
        (group.parent_uuid, group.name, int(group.enabled), now, group.uuid, site_uuid),
    )
    return group.uuid


def get_groups(conn: sqlite3.Connection, site_uuid: str, uuids: list[str]) -> list[sqlite3.Row]:
    if not uuids:
        return []
    marks = ",".join("?" * len(uuids))
    return conn.execute(
        f"SELECT {GROUP_COLUMNS} FROM device_groups WHERE site_uuid = ? AND uuid IN ({marks})",
        (site_uuid, *uuids),
    ).fetchall()


@reads
def all_groups(conn: sqlite3.Connection, site_uuid: str) -> list[sqlite3.Row]:
    return conn.execute(
        f"SELECT {GROUP_COLUMNS} FROM device_groups WHERE site_uuid = ? ORDER BY created, uuid",
        (site_uuid,),
    ).fetchall()


def _group(conn: sqlite3.Connection, site_uuid: str, group_uuid: str) -> sqlite3.Row:
    rows = get_groups(conn, site_uuid, [group_uuid])
    if not rows:
        raise NotFound(f"uuid: no device group {group_uuid!r} in this site")
    return rows[0]


load_group = reads(_group)


@dataclass(frozen=True, slots=True)
class SavedGroup:
    row: sqlite3.Row
    parents: dict[str, str | None] | None  # the site's new parent map when the group moved


@writes
def save(conn: sqlite3.Connection, site_uuid: str, group: GroupInput, now: int) -> SavedGroup:
    """Create or update the group; an existing group that changed parent is a move."""
    old_parent = parent_map(conn, site_uuid).get(group.uuid or "")
    saved = save_group(conn, site_uuid, group, now)
    moved = group.uuid is not None and old_parent != group.parent_uuid
    return SavedGroup(
        _group(conn, site_uuid, saved), parent_map(conn, site_uuid) if moved else None
    )
