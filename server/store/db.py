"""SQLite in WAL mode, kept off the event loop; store functions declared as whole transactions.

Theory of operation: one writer thread owns the only writing connection, so writes are
serialised without SQLite busy-waits. `write(fn)` runs `fn(conn)` as its own all-or-nothing
unit: a failed request writes nothing. Two reader threads hold their own connections; WAL lets
them read while the writer writes. `synchronous=FULL`: a commit that returned survives a power
cut. Migrations run at open, each in its own transaction.

Group commit: the writes waiting when the writer is free (at most WRITE_GROUP, in the order
they came) run in one BEGIN IMMEDIATE ... COMMIT, each inside a SAVEPOINT of its own: one that
raises is rolled back to its savepoint (its writes undone, the others' kept) and its caller gets
its exception; every caller hears of its write only after the COMMIT (durable). A commit costs
an fsync, so a burst of N writes costs about N / WRITE_GROUP of them instead of N (a fleet's
inventories after a rollout: tens of milliseconds each otherwise, and the requests behind them
timed out). When the transaction itself fails (the COMMIT, or an error that ends it, such as a
full disk), every write of the group fails with that error and none was written. A write whose
caller was cancelled before it started is skipped.

A store function marked `@writes` or `@reads` is one transaction: callers `await fn(db, ...)`
and never see a connection, so nothing outside server/store needs sqlite3. SQLite's own errors
leave here as ServerErrors: a lock held past busy_timeout is `StoreBusy` (503, Retry-After),
anything else `StoreFailed` (500; the log has the cause).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from server.errors import ConfigError, ServerError, StoreBusy, StoreFailed
from server.limits import WRITE_GROUP
from server.store.schema import MIGRATIONS, statements

T = TypeVar("T")
P = ParamSpec("P")
READERS = 2
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


@dataclass(frozen=True, slots=True)
class _Write:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(done: asyncio.Future[Any], error: BaseException | None, result: Any) -> None:
    if done.cancelled():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


def _translated(exc: sqlite3.Error) -> ServerError:
    failed = translate(exc)
    failed.__cause__ = exc
    return failed


def translate(exc: sqlite3.Error) -> ServerError:
    """The ServerError a request or the CLI sees for one of SQLite's errors."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _BUSY:
        return StoreBusy(str(exc))
    return StoreFailed(f"{type(exc).__name__}: {exc}")


class Database:
    def __init__(self, path: Path, *, write_group: int = WRITE_GROUP) -> None:
        self.path = path
        self.write_group = write_group
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, "sqlite-writer")
        self._readers = ThreadPoolExecutor(READERS, "sqlite-reader")
        self._waiting: list[_Write] = []  # guarded by _lock
        self._draining = False  # a drain is queued or running on the writer; guarded by _lock

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (errors reach the caller)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=10000")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-32000")
        except sqlite3.Error:
            conn.close()
            raise
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @staticmethod
    def _in_transaction(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _write_job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return self._in_transaction(self._conn(), fn, args)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _read_job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._waiting.append(_Write(fn, args, done, loop))
            start, self._draining = not self._draining, True
        if start:
            self._writer.submit(self._drain)
        return await done

    def _drain(self) -> None:  # on the writer thread
        while True:
            with self._lock:
                group = self._waiting[: self.write_group]
                del self._waiting[: self.write_group]
                if not group:
                    self._draining = False
                    return
            self._commit_group([w for w in group if not w.done.cancelled()])

    def _commit_group(self, group: list[_Write]) -> None:
        """One transaction for `group`, a savepoint each (module docstring); results delivered
        after the COMMIT."""
        if not group:
            return
        outcomes: list[tuple[_Write, BaseException | None, Any]] = []
        conn: sqlite3.Connection | None = None
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            for write in group:
                conn.execute("SAVEPOINT one_write")
                try:
                    result = write.fn(conn, *write.args)
                except sqlite3.Error as exc:
                    if not conn.in_transaction:  # the error ended the whole transaction
                        raise
                    conn.execute("ROLLBACK TO one_write")
                    outcomes.append((write, _translated(exc), None))
                except Exception as exc:  # noqa: BLE001 - the caller's to handle, as if in its task
                    conn.execute("ROLLBACK TO one_write")
                    outcomes.append((write, exc, None))
                else:
                    outcomes.append((write, None, result))
                conn.execute("RELEASE one_write")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn is not None and conn.in_transaction:
                    conn.execute("ROLLBACK")
            failed = _translated(exc)
            outcomes = [(write, failed, None) for write in group]
        for write, error, result in outcomes:
            write.loop.call_soon_threadsafe(_settle, write.done, error, result)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_job, fn, args)

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """For the CLI's site commands, which run without an event loop."""
        return self._writer.submit(self._write_job, fn, args).result()

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._readers.submit(self._read_job, fn, args).result()

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version. Blocking: call before serving."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._writer.submit(self._migrate_job).result()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path}: not a usable SQLite database ({exc})") from exc
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot open the database ({exc.strerror})") from exc

    def _migrate_job(self) -> int:
        conn = self._conn()
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        if current > len(MIGRATIONS):
            raise ConfigError(
                f"{self.path}: schema version {current} is newer than this server knows "
                f"({len(MIGRATIONS)}); upgrade midm-fleet"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            script = MIGRATIONS[version - 1]

            def apply(c: sqlite3.Connection, script: str = script, version: int = version) -> None:
                for statement in statements(script):
                    c.execute(statement)
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

            self._in_transaction(conn, apply, ())
        return len(MIGRATIONS)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def writes(
    body: Callable[Concatenate[sqlite3.Connection, P], T],
) -> Callable[Concatenate[Database, P], Awaitable[T]]:
    """Declare `body(conn, ...)` one write transaction: `await body(db, ...)` runs it in the
    writer thread, all or nothing."""

    @functools.wraps(body)
    async def transaction(db: Database, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await db.write(functools.partial(body, **kwargs), *args)

    return transaction


def reads(
    body: Callable[Concatenate[sqlite3.Connection, P], T],
) -> Callable[Concatenate[Database, P], Awaitable[T]]:
    """Declare `body(conn, ...)` one read transaction (a consistent snapshot) in a reader thread."""

    @functools.wraps(body)
    async def transaction(db: Database, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await db.read(functools.partial(body, **kwargs), *args)

    return transaction
