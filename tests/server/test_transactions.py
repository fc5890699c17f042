"""Store transactions (server.store.db): all or nothing, and SQLite's errors leave the store as
ServerErrors: a request that meets a database failure answers 50000 without its details and
logs them under the response's uq."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.errors import InvalidField, StoreBusy, StoreFailed
from server.store.db import Database, reads, translate, writes
from tests.helpers import Client, Server


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "t.sqlite")
    database.migrate()
    yield database
    database.close()


@writes
def add_site_then_fail(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("INSERT INTO sites (uuid, name, created) VALUES (?, ?, 0)", (name, name))
    raise InvalidField("name: refused after the insert")


@writes
def add_site(conn: sqlite3.Connection, name: str, *, created: int = 0) -> str:
    conn.execute("INSERT INTO sites (uuid, name, created) VALUES (?, ?, ?)", (name, name, created))
    return name


@reads
def site_names(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in conn.execute("SELECT name, created FROM sites ORDER BY name")]


@reads
def from_nowhere(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT * FROM nowhere")


async def test_a_transaction_is_all_or_nothing(db: Database) -> None:
    """A store error raised inside `@writes` rolls its writes back and reaches the caller as is;
    keyword arguments pass through."""
    with pytest.raises(InvalidField, match="refused"):
        await add_site_then_fail(db, "a")
    assert await site_names(db) == []
    assert await add_site(db, "b", created=7) == "b"
    assert await site_names(db) == [("b", 7)]


async def test_sqlite_errors_become_server_errors(db: Database) -> None:
    """An SQLite error is StoreFailed: str() names the cause (the CLI prints it), the envelope
    message does not, and the original is kept as __cause__."""
    with pytest.raises(StoreFailed) as failed:
        await from_nowhere(db)
    assert "no such table: nowhere" in str(failed.value)
    assert "nowhere" not in failed.value.message and failed.value.code == 50000
    assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(StoreFailed):
        db.read_sync(lambda conn: conn.execute("SELECT * FROM nowhere"))


def test_a_locked_database_is_busy_not_broken() -> None:
    """SQLITE_BUSY/LOCKED (another writer past busy_timeout) is 50300 with Retry-After."""
    for code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        locked = sqlite3.OperationalError("database is locked")
        locked.sqlite_errorcode = code
        busy = translate(locked)
        assert isinstance(busy, StoreBusy) and (busy.code, busy.retry_after) == (50300, 1)
    assert isinstance(translate(sqlite3.IntegrityError("UNIQUE constraint failed")), StoreFailed)


async def test_a_database_failure_in_a_request_is_50000_logged_under_its_uq(
    server: Server, admin: Client
) -> None:
    """The response names no table; the log line carries the response's uq and the cause."""
    device = [{"profile": {"hardware_info": {"serial_no": "D1"}}}]
    assert (await admin.post("/ota/api/device/save", device)).status == 200
    server.sql("DROP TABLE app_inventory")
    with capture_logs() as logs:
        reply = await admin.get("/ota/api/device/app/installed", serialNo="D1")
    assert (reply.status, reply.code) == (500, 50000)
    assert "app_inventory" not in reply.body["message"]
    failed = [e for e in logs if e["event"] == "request.failed"]
    assert len(failed) == 1 and failed[0]["uq"] == reply.body["uq"]
    assert "no such table: app_inventory" in failed[0]["cause"]


# -- group commit ------------------------------------------------------------------------------


async def _queue_behind_a_held_write(
    db: Database, writes_behind: list[Any]
) -> tuple[threading.Event, asyncio.Task[Any], list[asyncio.Task[Any]]]:
    """A first write that holds the writer until released, and `writes_behind` (awaitables)
    queued while it holds: they then form the next group."""
    started, release = threading.Event(), threading.Event()

    def held(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO sites (uuid, name, created) VALUES ('held', 'held', 0)")
        started.set()
        release.wait()
        return "held"

    first = asyncio.create_task(db.write(held))
    await asyncio.to_thread(started.wait)
    behind = [asyncio.ensure_future(w) for w in writes_behind]
    await asyncio.sleep(0)  # one turn: each queued write is in the waiting list
    return release, first, behind


async def test_waiting_writes_commit_together_each_all_or_nothing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes queued while the writer is busy run as one group (one COMMIT); one that fails
    among them is undone alone and its caller gets its error; the others' writes are kept and
    each caller gets its own result."""
    groups: list[int] = []
    commit_group = db._commit_group

    def counted(group: list[Any]) -> None:
        groups.append(len(group))
        commit_group(group)

    monkeypatch.setattr(db, "_commit_group", counted)
    names = [f"s{i:02}" for i in range(20)]
    queued = [add_site_then_fail(db, n) if n == "s07" else add_site(db, n) for n in names]
    release, first, behind = await _queue_behind_a_held_write(db, queued)
    release.set()
    assert await first == "held"
    results = await asyncio.gather(*behind, return_exceptions=True)
    assert groups == [1, 20]
    assert isinstance(results[7], InvalidField)
    assert [r for i, r in enumerate(results) if i != 7] == [n for n in names if n != "s07"]
    stored = [name for name, _ in await site_names(db)]
    assert stored == sorted(["held", *(n for n in names if n != "s07")])


async def test_an_error_that_ends_the_transaction_fails_the_whole_group(db: Database) -> None:
    """When one write's SQLite error ends the transaction (as a full disk or an I/O error
    does), every write of its group fails with a StoreFailed and none of them is written; the
    next write works."""

    def ends_it(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO sites (uuid, name, created) VALUES ('x', 'x', 0)")
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    queued = [add_site(db, "before"), db.write(ends_it), add_site(db, "after")]
    release, first, behind = await _queue_behind_a_held_write(db, queued)
    release.set()
    await first
    results = await asyncio.gather(*behind, return_exceptions=True)
    assert all(isinstance(r, StoreFailed) for r in results), results
    assert "disk I/O error" in str(results[1])
    assert [name for name, _ in await site_names(db)] == ["held"]
    assert await add_site(db, "later") == "later"
