"""The device API's storage (§7): tokens, check-in batches, inventories, events and progress.

Each public function is one transaction (`await fn(db, ...)`); the rules it applies (event
coverage, unscopeIfApplied) are decided by server.domain.coverage.

Check-in batches: `write_batch` writes a whole batch at once (the fast path); when it fails,
`write_rows` writes the same rows one statement each in one transaction and returns those that
failed on their own values (a statement that fails is undone by SQLite alone, the others stay);
a failure of the database itself (disk, I/O) still fails the whole transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from server.domain.coverage import UnscopeAction, first_uncovered, named_elsewhere, unscope
from server.domain.device_reports import EventInput, progress_status
from server.domain.profiles import next_updated
from server.errors import NotForDevice
from server.store.db import reads, writes
from server.store.devices import DEVICE_COLUMNS
from server.store.groups import parent_map
from server.store.profiles import find_profile


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinWrite:
    """One device's row after a check-in; written in batches."""

    device_uuid: str
    at: int
    client_version: int
    sleeping: bool
    interval_s: int
    report: str  # JSON


@writes
def set_token(
    conn: sqlite3.Connection,
    site_uuid: str,
    serial: str,
    token_hash: str,
    hardware: dict[str, str],
    now: int,
) -> str | None:
    """Give the device a new token (revoking the old one); its uuid, or None when no such
    device."""
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE site_uuid = ? AND serial_no = ?",
        (site_uuid, serial),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE devices SET token_hash = ?, manufacturer = COALESCE(NULLIF(?, ''), manufacturer), "
        "brand = COALESCE(NULLIF(?, ''), brand), model = COALESCE(NULLIF(?, ''), model), "
        "updated = ? WHERE uuid = ?",
        (
            token_hash,
            hardware.get("manufacturer", ""),
            hardware.get("brand", ""),
            hardware.get("model", ""),
            now,
            row["uuid"],
        ),
    )
    return str(row["uuid"])


@reads
def device_row(conn: sqlite3.Connection, device_uuid: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = ?", (device_uuid,)
    ).fetchone()
    return row


@dataclass(frozen=True, slots=True, kw_only=True)
class RowFailure:
    """One row of a check-in batch that could not be written, and why."""

    device_uuid: str
    error: str


# What a single row's values can raise: out-of-range integers, unencodable strings, wrong
# types, constraints. OperationalError (disk full, I/O, locked) concerns the database: not here.
_ROW_ERRORS = (
    OverflowError,
    ValueError,
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)
_CHECKIN_UPDATE = (
    "UPDATE devices SET last_checked_in = ?, enrolled = COALESCE(enrolled, ?), "
    "client_version = ?, sleeping = ?, interval_s = ?, report = ? WHERE uuid = ?"
)
_CHANNEL_UPDATE = (
    "UPDATE devices SET rtc_enabled = ?, last_disconnected = CASE WHEN ? THEN "
    "last_disconnected ELSE ? END WHERE uuid = ?"
)


def _checkin_params(w: CheckinWrite) -> tuple[object, ...]:
    return (w.at, w.at, w.client_version, int(w.sleeping), w.interval_s, w.report, w.device_uuid)


def _channel_params(change: tuple[str, bool, int]) -> tuple[object, ...]:
    device, connected, at = change
    return (int(connected), int(connected), at, device)


def write_checkins(conn: sqlite3.Connection, batch: Sequence[CheckinWrite]) -> None:
    conn.executemany(_CHECKIN_UPDATE, [_checkin_params(w) for w in batch])


@writes
def write_rows(
    conn: sqlite3.Connection,
    checkins: Sequence[CheckinWrite],
    channels: Sequence[tuple[str, bool, int]],
) -> list[RowFailure]:
    """`write_batch` one row at a time in one transaction; the rows that failed alone."""
    failures: list[RowFailure] = []
    rows = [(w.device_uuid, _CHECKIN_UPDATE, _checkin_params(w)) for w in checkins]
    rows += [(c[0], _CHANNEL_UPDATE, _channel_params(c)) for c in channels]
    for device_uuid, statement, params in rows:
        try:
            conn.execute(statement, params)
        except _ROW_ERRORS as exc:
            failures.append(RowFailure(device_uuid=device_uuid, error=repr(exc)))
    return failures


@writes
def write_batch(
    conn: sqlite3.Connection,
    checkins: Sequence[CheckinWrite],
    channels: Sequence[tuple[str, bool, int]],
) -> None:
    """One transaction: check-ins, then push-channel changes (device, connected, at)."""
    write_checkins(conn, checkins)
    conn.executemany(_CHANNEL_UPDATE, [_channel_params(c) for c in channels])


@writes
def mark_woken(conn: sqlite3.Connection, device_uuids: Sequence[str], now: int) -> None:
    conn.executemany(
        "UPDATE devices SET wake_sent = ? WHERE uuid = ?", [(now, u) for u in device_uuids]
    )


@writes
def save_inventory(
    conn: sqlite3.Connection,
    device_uuid: str,
    category: str,
    apps: list[dict[str, Any]],
    inventory_hash: str | None,
    now: int,
) -> None:
    conn.execute(
        "INSERT INTO app_inventory (device_uuid, category, apps, reported) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(device_uuid) DO UPDATE SET category = excluded.category, "
        "apps = excluded.apps, reported = excluded.reported",
        (device_uuid, category, json.dumps(apps), now),
    )
    conn.execute(
        "UPDATE devices SET inventory_hash = ? WHERE uuid = ?", (inventory_hash, device_uuid)
    )


@reads
def scope_inputs(
    conn: sqlite3.Connection, site_uuid: str
) -> tuple[list[tuple[str, int, dict[str, Any]]], dict[str, str | None], dict[str, frozenset[str]]]:
    """What compile_site needs: enabled profiles, the group tree, the exclusions."""
    profiles = [
        (r[0], r[1], json.loads(r[2]))
        for r in conn.execute(
            "SELECT uuid, updated, doc FROM profiles WHERE site_uuid = ? AND enabled = 1 "
            "ORDER BY created, rowid",
            (site_uuid,),
        )
    ]
    exclusions: dict[str, set[str]] = {}
    for profile_uuid, device_uuid in conn.execute(
        "SELECT e.profile_uuid, e.device_uuid FROM profile_exclusions e "
        "JOIN profiles p ON p.uuid = e.profile_uuid WHERE p.site_uuid = ?",
        (site_uuid,),
    ):
        exclusions.setdefault(profile_uuid, set()).add(device_uuid)
    return profiles, parent_map(conn, site_uuid), {k: frozenset(v) for k, v in exclusions.items()}


def progress_of(conn: sqlite3.Connection, device_uuid: str) -> dict[str, sqlite3.Row]:
    return {
        r["profile_uuid"]: r
        for r in conn.execute(
            "SELECT profile_uuid, status, reason, updated FROM profile_progress "
            "WHERE device_uuid = ?",
            (device_uuid,),
        )
    }


@reads
def profiles_with_progress(
    conn: sqlite3.Connection, site_uuid: str, device_uuid: str, profile_uuids: Sequence[str]
) -> list[tuple[sqlite3.Row, sqlite3.Row | None]]:
    """These profiles (those deleted meanwhile left out), each with the device's progress row."""
    progress = progress_of(conn, device_uuid)
    found = []
    for profile_uuid in profile_uuids:
        row = find_profile(conn, site_uuid, profile_uuid)
        if row is not None:
            found.append((row, progress.get(profile_uuid)))
    return found


@dataclass(frozen=True, slots=True)
class EventOutcome:
    stored: int
    applied_profiles: tuple[str, ...]  # profiles this batch moved to `applied`
    scope_changed: bool = False


@writes
def record_events(
    conn: sqlite3.Connection,
    site_uuid: str,
    device_uuid: str,
    serial: str,
    events: Sequence[EventInput],
    covering: frozenset[str],
    now: int,
) -> EventOutcome:
    """Check every event may name its profile (42200 for the first that may not: nothing is
    stored), store the new ones, then apply unscopeIfApplied for the profiles they applied."""
    known = known_events(conn, device_uuid, [e.id for e in events])
    covered_before = {
        profile_uuid
        for profile_uuid in named_elsewhere(events, covering)
        if has_covered(conn, profile_uuid, device_uuid)
    }
    refused = first_uncovered(
        events, covering=covering, covered_before=covered_before, known_ids=known
    )
    if refused is not None:
        raise NotForDevice(
            f"profileUuid: profile {refused.profile_uuid!r} does not cover this device "
            f"(event {refused.id})"
        )
    outcome = store_events(conn, site_uuid, device_uuid, events, now)
    changed = False
    for profile_uuid in outcome.applied_profiles:
        changed |= _unscope(conn, site_uuid, profile_uuid, device_uuid, serial, now)
    return EventOutcome(outcome.stored, outcome.applied_profiles, changed)


def known_events(conn: sqlite3.Connection, device_uuid: str, ids: Sequence[str]) -> set[str]:
    marks = ",".join("?" * len(ids))
    return {
        r[0]
        for r in conn.execute(
            f"SELECT id FROM events WHERE device_uuid = ? AND id IN ({marks})", (device_uuid, *ids)
        )
    }


def has_covered(conn: sqlite3.Connection, profile_uuid: str, device_uuid: str) -> bool:
    """The profile covered the device once: it has progress there, or excluded it."""
    return (
        conn.execute(
            "SELECT 1 FROM profile_progress WHERE profile_uuid = ? AND device_uuid = ? UNION ALL "
            "SELECT 1 FROM profile_exclusions WHERE profile_uuid = ? AND device_uuid = ?",
            (profile_uuid, device_uuid, profile_uuid, device_uuid),
        ).fetchone()
        is not None
    )


def store_events(
    conn: sqlite3.Connection,
    site_uuid: str,
    device_uuid: str,
    events: Iterable[EventInput],
    now: int,
) -> EventOutcome:
    """Insert new events (ids already stored are skipped), then progress and AppStatus.

    Order, decided: a device's progress, AppStatus and inventory follow its events in the order
    the server stores them, and their `updated`/`reported` is the server's time (`now`); the
    device's own time (`at`) is kept in the event as data. The last event stored wins, with no
    comparison of times: one writer stores a device's batches in the order they came, each in
    its own order (the agent's queue), and a batch sent again is skipped by its event ids, so
    nothing older comes back. Ordering by `at` trusted the device's clock: one set back a day
    could never move its progress again (scenarios/clock-skew.toml); a comparison of the
    server's times would fail the same way for as long as the server's clock stepped back.
    """
    stored = 0
    applied: list[str] = []
    for event in events:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO events (id, site_uuid, device_uuid, profile_uuid, at, received, "
            "kind, target, status, reason, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.id,
                site_uuid,
                device_uuid,
                event.profile_uuid,
                event.at_ms,
                now,
                event.kind,
                event.target,
                event.status,
                event.reason,
                json.dumps(event.doc),
            ),
        )
        if cursor.rowcount == 0:
            continue
        stored += 1
        if event.profile_uuid is not None:
            status = progress_status(event.kind, event.status)
            conn.execute(
                "INSERT INTO profile_progress (profile_uuid, device_uuid, status, reason, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(profile_uuid, device_uuid) DO UPDATE SET "
                "status = excluded.status, reason = excluded.reason, updated = excluded.updated",
                (event.profile_uuid, device_uuid, status, event.reason, now),
            )
            if status == "applied":
                applied.append(event.profile_uuid)
        if event.kind == "app" and event.target:
            _app_status(conn, device_uuid, event, now)
    return EventOutcome(stored, tuple(dict.fromkeys(applied)))


def _app_status(conn: sqlite3.Connection, device_uuid: str, event: EventInput, now: int) -> None:
    """An installed app: its AppStatus and its inventory entry, as of `now` (the server's
    time: the last event stored wins, see store_events); a failed one only where there is no
    AppStatus yet."""
    version = event.doc.get("versionCode")
    if event.status == "installed":
        conn.execute(
            "INSERT INTO app_status (device_uuid, package_name, version_code, installed, updated) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT(device_uuid, package_name) DO UPDATE SET "
            "version_code = excluded.version_code, installed = 1, updated = excluded.updated",
            (device_uuid, event.target, version, now),
        )
        _inventory_upsert(conn, device_uuid, event.target, version, now)
    elif event.status == "failed":
        conn.execute(
            "INSERT OR IGNORE INTO app_status (device_uuid, package_name, version_code, installed, "
            "updated) VALUES (?, ?, NULL, 0, ?)",
            (device_uuid, event.target, now),
        )


def _inventory_upsert(
    conn: sqlite3.Connection, device_uuid: str, package: str, version: int | None, at: int
) -> None:
    """An installed app shows in the inventory at once; `reported` is `at`, the server's time
    of the event (as for a whole inventory), not the device's."""
    row = conn.execute(
        "SELECT apps FROM app_inventory WHERE device_uuid = ?", (device_uuid,)
    ).fetchone()
    apps: list[dict[str, Any]] = json.loads(row[0]) if row else []
    for app in apps:
        if app.get("packageName") == package:
            app["versionCode"] = version
            break
    else:
        apps.append({"packageName": package, "versionCode": version})
    conn.execute(
        "INSERT INTO app_inventory (device_uuid, category, apps, reported) VALUES (?, 'all', ?, ?) "
        "ON CONFLICT(device_uuid) DO UPDATE SET apps = excluded.apps, reported = excluded.reported",
        (device_uuid, json.dumps(apps), at),
    )


def _unscope(
    conn: sqlite3.Connection,
    site_uuid: str,
    profile_uuid: str,
    device_uuid: str,
    serial: str,
    now: int,
) -> bool:
    """Apply unscopeIfApplied/removeIfNoScope for one device; True when the profile changed."""
    row = conn.execute(
        "SELECT doc, updated FROM profiles WHERE uuid = ? AND site_uuid = ?",
        (profile_uuid, site_uuid),
    ).fetchone()
    if row is None:
        return False
    change = unscope(json.loads(row[0]), serial)
    if change.action == UnscopeAction.KEEP:
        return False
    conn.execute(
        "INSERT OR IGNORE INTO profile_exclusions VALUES (?, ?)", (profile_uuid, device_uuid)
    )
    if change.action == UnscopeAction.DELETE:
        conn.execute("DELETE FROM profiles WHERE uuid = ?", (profile_uuid,))
        return True
    conn.execute(
        "UPDATE profiles SET doc = ?, updated = ? WHERE uuid = ?",
        (json.dumps(change.doc), next_updated(now, row[1]), profile_uuid),
    )
    return True
