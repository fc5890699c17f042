"""Durable file writes, and the one writer thread that does the stores' disk work off the loop.

`write_atomic`: temp file in the same folder, fsync, rename, fsync the folder, so after `kill -9`
or a power cut the file is the old one or the new one, never half of either.

`submit(job)` queues `job` on a single process-wide writer thread. One thread keeps the jobs in
the order they were given (a later commit never lands before an earlier one); callers await the
returned future shielded, so a job outlives a cancelled caller and the bookkeeping attached to it
always runs. `in_background(job)` queues a job nobody waits for (unlinking acked files).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

log = structlog.get_logger("agent.files")
T = TypeVar("T")

_writer: ThreadPoolExecutor | None = None
_writer_lock = threading.Lock()


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    temp.replace(path)
    sync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer() -> ThreadPoolExecutor:
    """The process's writer thread (started on first use, joined at interpreter exit)."""
    global _writer  # one writer per process, made on first use
    with _writer_lock:
        if _writer is None:
            _writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midm-writer")
        return _writer


def submit(job: Callable[[], T]) -> asyncio.Future[T]:
    """Queue `job` on the writer thread; its result (or exception) arrives on the running loop."""
    return asyncio.wrap_future(writer().submit(job))


def in_background(job: Callable[[], None], what: str) -> None:
    """Queue `job` on the writer thread without waiting; an OSError is logged as `what`."""

    def guarded() -> None:
        try:
            job()
        except OSError as exc:
            log.warning("files.background_failed", what=what, error=str(exc))

    writer().submit(guarded)
