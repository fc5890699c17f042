"""File-format parsing for uploads, run in a worker process (androguard is slow and GIL-bound).

The worker functions return plain values (never raise across the process boundary): the server
turns a failure into a 40001 naming the file and the reason. The formats themselves are parsed
by midm_common.apk and midm_common.ota, the project's one parser of each.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any


def apk_worker(path: str) -> tuple[dict[str, Any] | None, str]:
    from midm_common.apk import read_apk_metadata
    from midm_common.errors import ApkError

    try:
        return asdict(read_apk_metadata(Path(path))), ""
    except ApkError as exc:
        return None, str(exc)


def ota_worker(path: str) -> tuple[dict[str, Any] | None, str]:
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
