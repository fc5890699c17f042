"""The SQLite store: migrations upgrade old files in place, a newer schema is refused clearly,
and a failed write leaves nothing behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server.errors import ConfigError, InvalidField
from server.store.db import Database
from server.store.schema import MIGRATIONS, statements


def test_upgrade_from_version_1_keeps_data(tmp_path: Path) -> None:
    """A version-1 file is migrated; group device counts are computed from existing rows."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO sites VALUES ('s', 'site', 0)")
    conn.execute("INSERT INTO device_groups VALUES ('g', 's', NULL, 'g', 1, 0, 0)")
    for serial in ("a", "b"):
        conn.execute(
            "INSERT INTO devices (uuid, site_uuid, serial_no, group_uuid, enabled, created, "
            "updated) VALUES (?, 's', ?, 'g', 1, 0, 0)",
            (serial, serial),
        )
    conn.close()
    db = Database(path)
    try:
        assert db.migrate() == len(MIGRATIONS)
        assert (
            db.read_sync(
                lambda c: c.execute("SELECT device_count FROM device_groups").fetchone()[0]
            )
            == 2
        )
        db.write_sync(lambda c: c.execute("UPDATE devices SET group_uuid = NULL WHERE uuid = 'a'"))
        assert (
            db.read_sync(
                lambda c: c.execute("SELECT device_count FROM device_groups").fetchone()[0]
            )
            == 1
        )
        assert db.migrate() == len(MIGRATIONS)  # idempotent
    finally:
        db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer midm-fleet is refused with a sentence, not a crash."""
    path = tmp_path / "new.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (999)")
    conn.close()
    db = Database(path)
    try:
        with pytest.raises(ConfigError, match="newer than this server knows"):
            db.migrate()
    finally:
        db.close()


def test_failed_write_rolls_back(tmp_path: Path) -> None:
    """An exception inside a write undoes every statement of that write."""
    db = Database(tmp_path / "db.sqlite")
    try:
        db.migrate()

        def half_write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO sites VALUES ('s1', 'one', 0)")
            raise InvalidField("second half failed")

        with pytest.raises(InvalidField):
            db.write_sync(half_write)
        assert db.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM sites").fetchone()[0]) == 0
    finally:
        db.close()


def test_statement_splitter_keeps_trigger_bodies() -> None:
    """Semicolons inside BEGIN ... END do not split a statement."""
    script = (
        "CREATE TABLE t (a);\n"
        "CREATE TRIGGER x AFTER INSERT ON t BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n"
    )
    assert len(statements(script)) == 2
