"""Install times of an app where the platform has only file times (Linux rigs). Pure.

Rules (AppInfo `firstInstalled` / `lastUpdated`, epoch milliseconds):
- lastUpdated is the base APK's mtime: when the installed version's file was written.
- firstInstalled is the earliest of: the value remembered when the agent first saw the package
  (kept in the state dir across restarts and upgrades, forgotten when the package is removed),
  the file's ctime, and lastUpdated. A copy that keeps its mtime (`cp -p`, rsync -a, tar) has a
  ctime later than its mtime, so ctime alone would put firstInstalled after lastUpdated.
- Both are clamped to >= 0 (the protocol's minimum; some build tools date files before 1970).
Hence 0 <= firstInstalled <= lastUpdated, whatever the file system says. Platforms that are told
both times (Android's package manager) pass them through `ordered_times`, which keeps the same
invariant should the device's clock have jumped between install and update.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class AppTimes:
    first_installed: int
    last_updated: int


def app_times(*, remembered: int | None, ctime_ms: int, mtime_ms: int) -> AppTimes:
    """The times to report, and (first_installed) the value to remember for the package."""
    last = max(0, mtime_ms)
    first = min(last, max(0, ctime_ms))
    if remembered is not None:
        first = min(first, max(0, remembered))
    return AppTimes(first_installed=first, last_updated=last)


def ordered_times(first: int | None, last: int | None) -> tuple[int | None, int | None]:
    """Reported (firstInstalled, lastUpdated): each >= 0, and first <= last when both known."""
    first = None if first is None else max(0, first)
    last = None if last is None else max(0, last)
    if first is not None and last is not None and first > last:
        first = last
    return first, last
