"""The installed-app inventory from a tree of APKs, with a persistent parse cache.

Theory of operation: an app is an APK file, or a folder holding `base.apk` and `split_*.apk`
(its size is the sum). Each APK is keyed by (path, size, mtime_ns, inode); a rescan looks every
key up in the cache and parses only what is new or changed, so a rescan with nothing changed
parses nothing. Parsing runs off the event loop: in a worker thread for a few files, in a
small process pool when many changed. A file that cannot be parsed never stops a scan: it is
skipped with a structured warning naming the file and the reason (and remembered, so it is not
parsed again until it changes). The cache (`inventory-cache.json` in the state dir) survives
restarts; a corrupt cache is discarded with a warning. It also remembers each package's
firstInstalled (agent.apk.times: firstInstalled <= lastUpdated, kept across upgrades and
restarts, forgotten when the package is removed).

A tree that cannot be listed (missing, a file, permission denied, removed or unmounted during
the scan) fails the scan with PlatformError: an unreadable source is never an empty inventory,
so the last inventory reported stands.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from agent import protocol
from agent.apk.times import app_times
from agent.errors import PlatformError
from agent.models import AppRecord
from agent.runtime.files import write_atomic

log = structlog.get_logger("agent.inventory")
CACHE_FILE = "inventory-cache.json"
CACHE_VERSION = 1
PROCESS_POOL_THRESHOLD = 16  # changed APKs above which parsing moves to worker processes


def parse_apk(path: str) -> dict[str, Any]:
    """Worker: the APK's identity as AppInfo fields (the cache keeps them so), or
    {"error": reason, "message": text}."""
    from agent.errors import ApkError
    from midm_common.apk import read_apk_metadata

    try:
        meta = read_apk_metadata(Path(path))
    except ApkError as exc:
        return {"error": exc.reason, "message": str(exc)}
    identity = AppRecord(
        package_name=meta.package_name,
        label=meta.label,
        version_code=meta.version_code,
        version_name=meta.version_name,
        min_sdk_version=meta.min_sdk_version,
        target_sdk_version=meta.target_sdk_version,
        max_sdk_version=meta.max_sdk_version,
        cert_md5=meta.cert_md5,
    )
    return {k: v for k, v in protocol.app_to_wire(identity).items() if v is not None}


def parse_many(paths: list[str]) -> list[dict[str, Any]]:
    return [parse_apk(p) for p in paths]


@dataclass(frozen=True, slots=True)
class AppFiles:
    """One installed app: its base APK and split APKs."""

    base: Path
    splits: tuple[Path, ...] = ()


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def folder_problem(root: Path) -> str | None:
    """Why `root` cannot be listed as a folder ("not found", "it is a file", ...), or None."""
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except FileNotFoundError:
        return "not found"
    except NotADirectoryError:
        return "it is a file" if root.exists() else "not a directory"
    except OSError as exc:
        return _reason(exc)
    return None


def find_apps(root: Path) -> list[AppFiles]:
    """Every app under `root`: folders with base.apk (plus splits), and other *.apk files.

    Raises OSError when `root` or a folder in it cannot be listed (a sub-folder removed while
    walking is an uninstalled app, not an error): a partial listing would report apps as gone.
    """
    apps: list[AppFiles] = []

    def fail(exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError) and exc.filename and Path(exc.filename) != root:
            return
        raise exc

    for folder, dirs, files in os.walk(root, onerror=fail):
        dirs.sort()
        here = Path(folder)
        apks = sorted(f for f in files if f.endswith(".apk"))
        if "base.apk" in apks:
            splits = tuple(here / f for f in apks if f.startswith("split_"))
            apps.append(AppFiles(here / "base.apk", splits))
            rest = [f for f in apks if f != "base.apk" and not f.startswith("split_")]
        else:
            rest = apks
        apps.extend(AppFiles(here / f) for f in rest)
    return apps


def _unreadable(root: Path | None, path: Path, problem: str) -> PlatformError:
    """The error (and one warning) for a scan that cannot see the whole tree."""
    log.warning("inventory.source_unreadable", path=str(path), reason=problem)
    what = (
        f"--apk-dir {root}: no such folder ({problem})"
        if path == root
        else f"{path}: cannot read ({problem})"
    )
    return PlatformError(f"{what}; the last inventory reported stands")


def file_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def stat_all(apps: Iterable[AppFiles]) -> dict[Path, os.stat_result | None]:
    found: dict[Path, os.stat_result | None] = {}
    for app in apps:
        for path in (app.base, *app.splits):
            try:
                found[path] = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                found[path] = None  # vanished between listing and stat: not installed
    return found


class InventoryCache:
    """path -> (key, parsed metadata or error), and package -> remembered firstInstalled (ms);
    loaded once, saved when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.first_installed: dict[str, int] = {}
        self.dirty = False

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("inventory.cache_unreadable", path=str(self.path), reason=exc.strerror)
            return
        try:
            values = json.loads(raw)
            if values.get("version") != CACHE_VERSION or not isinstance(values["entries"], dict):
                raise ValueError("unknown cache version")
            first = values.get("firstInstalled", {})  # absent in caches of older agents
            if not isinstance(first, dict) or not all(type(v) is int for v in first.values()):
                raise ValueError("firstInstalled is not a map of integers")
            self.entries, self.first_installed = values["entries"], first
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("inventory.cache_discarded", path=str(self.path), reason=str(exc))
            self.entries, self.first_installed = {}, {}
            self.dirty = True

    def lookup(self, path: Path, key: list[int]) -> dict[str, Any] | None:
        entry = self.entries.get(str(path))
        if entry is not None and entry.get("key") == key:
            meta: dict[str, Any] = entry["meta"]
            return meta
        return None

    def store(self, path: Path, key: list[int], meta: dict[str, Any]) -> None:
        self.entries[str(path)] = {"key": key, "meta": meta}
        self.dirty = True

    def forget_missing(self, present: set[str]) -> None:
        gone = set(self.entries) - present
        for path in gone:
            del self.entries[path]
        self.dirty = self.dirty or bool(gone)

    def remember_first(self, firsts: dict[str, int]) -> None:
        """Replace the remembered firstInstalled map with `firsts` (the installed packages):
        a package no longer installed is forgotten, so a reinstall starts again."""
        if firsts != self.first_installed:
            self.first_installed = dict(firsts)
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        values = {
            "version": CACHE_VERSION,
            "entries": self.entries,
            "firstInstalled": self.first_installed,
        }
        write_atomic(self.path, json.dumps(values).encode())
        self.dirty = False


@dataclass(frozen=True, slots=True)
class ScanResult:
    apps: list[AppRecord]
    parsed: int
    skipped: int


class InventoryScanner:
    def __init__(self, root: Path | None, cache_path: Path) -> None:
        self.root = root
        self.cache = InventoryCache(cache_path)
        self.cache.load()
        self._lock = asyncio.Lock()

    async def scan(self) -> ScanResult:
        """Scan the tree under `root`; PlatformError when it cannot be listed."""
        if self.root is None:
            return ScanResult([], 0, 0)
        try:
            apps = await asyncio.to_thread(find_apps, self.root)
        except OSError as exc:
            if problem := folder_problem(self.root):
                raise _unreadable(self.root, self.root, problem) from exc
            raise _unreadable(self.root, Path(exc.filename or self.root), _reason(exc)) from exc
        return await self.scan_files(apps, root=self.root)

    async def scan_files(self, apps: list[AppFiles], *, root: Path | None = None) -> ScanResult:
        """Scan the given apps (Android lists them with pm instead of a folder walk); with
        `root`, the folder they were listed from must still be there after the stats."""
        async with self._lock:  # one scan at a time; check-ins keep running meanwhile
            try:
                stats = await asyncio.to_thread(stat_all, apps)
            except OSError as exc:
                raise _unreadable(root, Path(exc.filename or "?"), _reason(exc)) from exc
            if root is not None and (problem := await asyncio.to_thread(folder_problem, root)):
                raise _unreadable(root, root, problem)  # removed or unmounted while scanning
            todo = [
                p
                for p, s in stats.items()
                if s is not None and self.cache.lookup(p, file_key(s)) is None
            ]
            if todo:
                results = await self._parse([str(p) for p in todo])
                for path, meta in zip(todo, results, strict=True):
                    stat = stats[path]
                    assert stat is not None
                    self.cache.store(path, file_key(stat), meta)
                    if "error" in meta:  # said once per file version, not at every scan
                        log.warning(
                            "inventory.parse_failed",
                            path=str(path),
                            reason=meta["error"],
                            detail=meta["message"],
                        )
            self.cache.forget_missing({str(p) for p, s in stats.items() if s is not None})
            records, skipped = self._records(apps, stats)
            await asyncio.to_thread(self.cache.save)
            return ScanResult(records, len(todo), skipped)

    async def _parse(self, paths: list[str]) -> list[dict[str, Any]]:
        if len(paths) <= PROCESS_POOL_THRESHOLD:
            return await asyncio.to_thread(parse_many, paths)
        workers = min(4, os.cpu_count() or 1)
        chunks = [paths[i::workers] for i in range(workers)]
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that imported androguard once (not once per worker).
        context.set_forkserver_preload(["agent.apk.inventory", "androguard.core.apk"])
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            parts = await asyncio.gather(
                *(loop.run_in_executor(pool, parse_many, chunk) for chunk in chunks)
            )
        by_path = {
            p: r
            for chunk, part in zip(chunks, parts, strict=True)
            for p, r in zip(chunk, part, strict=True)
        }
        return [by_path[p] for p in paths]

    def _records(
        self, apps: list[AppFiles], stats: dict[Path, os.stat_result | None]
    ) -> tuple[list[AppRecord], int]:
        """One record per package (its highest versionCode), with its times (agent.apk.times);
        remembers each package's firstInstalled in the cache."""
        records: dict[str, AppRecord] = {}
        skipped = 0
        firsts: dict[str, int] = {}
        for app in apps:
            base = stats.get(app.base)
            meta = self.cache.lookup(app.base, file_key(base)) if base is not None else None
            if base is None or meta is None or "error" in meta:
                skipped += 1
                continue
            identity = protocol.app_from_wire(meta)
            package = identity.package_name
            known = records.get(package)
            if known is not None and (identity.version_code or 0) <= (known.version_code or 0):
                continue
            times = app_times(
                remembered=self.cache.first_installed.get(package),
                ctime_ms=base.st_ctime_ns // 1_000_000,
                mtime_ms=base.st_mtime_ns // 1_000_000,
            )
            firsts[package] = times.first_installed
            records[package] = replace(
                identity,
                app_size=sum(s.st_size for p in (app.base, *app.splits) if (s := stats.get(p))),
                data_size=0,
                first_installed=times.first_installed,
                last_updated=times.last_updated,
            )
        self.cache.remember_first(firsts)
        return sorted(records.values(), key=lambda r: r.package_name), skipped
