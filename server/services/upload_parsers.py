"""The upload-parser worker pool: APK and OTA metadata of uploads, parsed in a worker process.

androguard is slow and GIL-bound, so parsing never runs on the event loop. The pool is the
caller's if given (tests share one worker across servers; the caller shuts it down), else one
worker process started on the first upload and stopped with the app. The worker functions
return plain values (never raise across the process boundary): `(metadata, "")` or
`(None, reason)`, which the server turns into a 40001 naming the file. The formats themselves
are parsed by midm_common.apk and midm_common.ota, the project's one parser of each.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

Parsed = tuple[dict[str, Any] | None, str]


def apk_worker(path: str) -> Parsed:
    from midm_common.apk import read_apk_metadata
    from midm_common.errors import ApkError

    try:
        return asdict(read_apk_metadata(Path(path))), ""
    except ApkError as exc:
        return None, str(exc)


def ota_worker(path: str) -> Parsed:
    from midm_common.errors import OtaPackageError
    from midm_common.ota import read_ota_metadata

    try:
        meta = read_ota_metadata(Path(path))
    except OtaPackageError as exc:
        return None, str(exc)
    return {
        "ab_update": meta.ab_update,
        "pre_devices": list(meta.pre_devices),
        "pre_build": meta.pre_build,
        "post_build": meta.post_build,
        "post_timestamp": meta.post_timestamp,
    }, ""


def new_parser_pool() -> Executor:
    """One worker process, started on first use (forkserver: no fork of a threaded server)."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver"))


class UploadParsers:
    def __init__(self, pool: Executor | None = None) -> None:
        self.pool = pool  # started on the first upload, unless given
        self._owns_pool = pool is None

    async def apk(self, path: Path) -> Parsed:
        return await self._run(apk_worker, path)

    async def ota(self, path: Path) -> Parsed:
        return await self._run(ota_worker, path)

    async def _run(self, worker: Callable[[str], Parsed], path: Path) -> Parsed:
        if self.pool is None:
            self.pool = new_parser_pool()
        return await asyncio.get_running_loop().run_in_executor(self.pool, worker, str(path))

    def close(self) -> None:
        """Stop the worker if this app started it; a given pool is left to its owner."""
        if self.pool is not None and self._owns_pool:
            self.pool.shutdown(wait=True, cancel_futures=True)
