"""The upload-parser worker: APK and OTA metadata of uploads, parsed in a worker process.

androguard is slow and GIL-bound, so parsing never runs on the event loop. Rules:
- One worker process (forkserver), started on first use, unless the app was given a pool (tests
  share one across servers; its owner shuts it down).
- Parses run one at a time (a lock), each bounded by PARSE_TIMEOUT_S, counted from when it starts
  in a live worker (a new worker first answers a ping within PARSER_START_TIMEOUT_S). A parse
  over the bound has its worker killed and answers `(None, "parsing took longer than ...")`, a
  40001 for the caller [ours: a parse that long is the file's doing, the worker running alone];
  the next parse starts a new worker.
- A worker that died (the OOM killer, kill -9) breaks its pool (BrokenProcessPool): the pool is
  replaced and that parse retried once on the new worker; a second death answers 50300 with
  Retry-After [ours: the file may be at fault, but so may the machine: "retry later", not 400].
- A given pool is never killed (it is its owner's): when it breaks or a parse in it times out,
  the app stops using it and starts its own.
- The worker never outlives the server: close() stops it (killed if a parse is running; a parse
  whose caller was cancelled is killed at once, its result unwanted), no worker starts after
  close(), and a watchdog thread in the worker exits it when the server process is gone (its
  parent changed or the server's pid is no more), checked every PARSER_WATCHDOG_S: after a
  kill -9 of the server.
- Archives are read within the zip limits of server/limits.py (midm_common.zipguard, in the
  worker): a bomb is refused there, naming the entry and the limit.
The worker functions return plain values (never raise across the process boundary): `(metadata,
"")` or `(None, reason)`, which the server turns into a 40001 naming the file. The formats are
parsed by midm_common.apk and midm_common.ota, the project's one parser of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from midm_common.zipguard import ZipLimits
from server import limits
from server.errors import Unavailable

log = structlog.get_logger("server.upload_parsers")
Parsed = tuple[dict[str, Any] | None, str]
Worker = Callable[[str], Parsed]


def upload_zip_limits() -> ZipLimits:
    """The zip limits of server/limits.py, as midm_common's readers take them."""
    return ZipLimits(
        max_entries=limits.ZIP_MAX_ENTRIES,
        max_ratio=limits.ZIP_MAX_RATIO,
        ratio_grace=limits.ZIP_RATIO_GRACE,
        max_entry_bytes=limits.ZIP_ENTRY_BYTES,
        max_manifest_bytes=limits.ZIP_MANIFEST_BYTES,
        max_arsc_bytes=limits.ZIP_ARSC_BYTES,
        max_ota_metadata_bytes=limits.OTA_METADATA_BYTES,
    )


def apk_worker(path: str) -> Parsed:
    from midm_common.apk import read_apk_metadata
    from midm_common.errors import FormatError

    try:
        meta = read_apk_metadata(Path(path), upload_zip_limits(), verify_signatures=True)
        return asdict(meta), ""
    except FormatError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - nothing crosses the process boundary but values
        return None, f"{Path(path).name}: the APK parser failed ({exc!r})"


def ota_worker(path: str) -> Parsed:
    from midm_common.errors import FormatError
    from midm_common.ota import read_ota_metadata

    try:
        meta = read_ota_metadata(Path(path), upload_zip_limits())
    except FormatError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - nothing crosses the process boundary but values
        return None, f"{Path(path).name}: the OTA parser failed ({exc!r})"
    if meta.signature.reason:  # a signature block that does not verify (§4): refused
        return None, f"{Path(path).name}: {meta.signature.reason}"
    return {
        "ab_update": meta.ab_update,
        "pre_devices": list(meta.pre_devices),
        "pre_build": meta.pre_build,
        "post_build": meta.post_build,
        "post_timestamp": meta.post_timestamp,
        "ota_cert": meta.signature.signer_pem,  # "" unless validly signed
    }, ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ParserWorkers:
    """The functions the worker runs (module-level, so they pickle); tests put in their own."""

    apk: Worker = apk_worker
    ota: Worker = ota_worker


def _ping() -> int:
    return os.getpid()


def _server_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_server(server_pid: int, interval_s: float) -> None:
    """Worker initializer: a daemon thread that exits the worker once the server is gone."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent or not _server_alive(server_pid):
                os._exit(0)

    threading.Thread(target=watch, name="server-watchdog", daemon=True).start()


def new_parser_pool() -> ProcessPoolExecutor:
    """One worker process, started on first use (forkserver: no fork of a threaded server),
    watching the server's process."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_watch_server,
        initargs=(os.getpid(), limits.PARSER_WATCHDOG_S),
    )


class UploadParsers:
    def __init__(self, pool: Executor | None = None) -> None:
        self.pool = pool  # started on the first upload, unless given
        self._owns_pool = pool is None
        self.workers = ParserWorkers()
        self.timeout_s = limits.PARSE_TIMEOUT_S
        self.start_timeout_s = limits.PARSER_START_TIMEOUT_S
        self.worker_pid: int | None = None  # of the app's own worker, once it answered a ping
        self._lock = asyncio.Lock()
        self._job: Future[Parsed] | None = None  # the parse submitted last
        self._closed = False

    async def start(self) -> int | None:
        """Start the app's own worker now (else the first upload does); its pid, None for a
        given pool."""
        await self._live_pool()
        return self.worker_pid

    async def apk(self, path: Path) -> Parsed:
        return await self._run(self.workers.apk, path)

    async def ota(self, path: Path) -> Parsed:
        return await self._run(self.workers.ota, path)

    async def _run(self, worker: Worker, path: Path) -> Parsed:
        async with self._lock:
            for attempt in (1, 2):
                pool = await self._live_pool()
                try:
                    self._job = pool.submit(worker, str(path))
                    async with asyncio.timeout(self.timeout_s):
                        return await asyncio.wrap_future(self._job)
                except BrokenProcessPool:
                    log.warning("upload_parsers.worker_lost", file=path.name, attempt=attempt)
                    self._drop(pool, kill=False)
                except TimeoutError:
                    log.warning("upload_parsers.parse_timeout", file=path.name, s=self.timeout_s)
                    self._drop(pool, kill=True)
                    return None, (
                        f"{path.name}: parsing took longer than the limit of "
                        f"{self.timeout_s:g} s; the parser was stopped"
                    )
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._closed and task is not None and not task.cancelling():
                        # close() cancelled the queued parse, not our caller
                        raise Unavailable(
                            "the server is stopping; retry shortly", retry_after=5
                        ) from None
                    self._drop(pool, kill=True)  # nobody waits for it: do not let it run on
                    raise
        raise Unavailable(
            "the upload parser's worker stopped twice while reading this file; retry shortly",
            retry_after=5,
        )

    async def _live_pool(self) -> Executor:
        """The pool to parse in: the given one, or the app's own with a worker that answered."""
        if self.pool is not None:
            return self.pool
        if self._closed:
            raise Unavailable("the server is stopping; retry shortly", retry_after=5)
        pool = new_parser_pool()
        try:
            async with asyncio.timeout(self.start_timeout_s):
                pid = await asyncio.get_running_loop().run_in_executor(pool, _ping)
        except (BrokenProcessPool, TimeoutError) as exc:
            pool.shutdown(wait=False, cancel_futures=True)
            raise Unavailable(
                "the upload parser's worker did not start; retry shortly", retry_after=5
            ) from exc
        self.pool, self._owns_pool, self.worker_pid = pool, True, pid
        log.info("upload_parsers.started", pid=pid)
        return pool

    def _drop(self, pool: Executor, *, kill: bool) -> None:
        """Stop using `pool`; the app's own is shut down (its worker killed if `kill`)."""
        self.pool = None
        if not self._owns_pool:
            return  # a given pool: its owner's to stop
        if kill:
            self._kill_worker()
        self.worker_pid = None
        pool.shutdown(wait=False, cancel_futures=True)

    def _kill_worker(self) -> None:
        if self.worker_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker_pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the worker if this app started it (killed if mid-parse); a given pool is left
        to its owner."""
        self._closed = True
        pool = self.pool
        if pool is None or not self._owns_pool:
            return
        if self._job is not None and not self._job.done():
            self._kill_worker()
        pool.shutdown(wait=True, cancel_futures=True)
