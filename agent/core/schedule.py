"""When a profile applies (pure): start, repeat occurrences, end, and the daily time window.

- Start: the later of `profile.startsOn` and `schedule_date.start_on`; nothing before it.
- Repeats: `repeatOption` daily/weekly/monthly every `repeatEvery` periods (monthly by calendar
  month); occurrence k starts at start + k periods. `endsOption`: never; `on` (no occurrence
  starts after `ends`); `after` (`ends` occurrences). Each occurrence re-checks the profile.
- Window: `timeOption` "HH:mm-HH:mm" in device local time, end exclusive, may wrap midnight.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

DAY_MS = 86_400_000


def parse_time(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    return None


def start_of(doc: dict[str, Any]) -> int | None:
    times = [
        parse_time((doc.get("profile") or {}).get("startsOn")),
        parse_time((doc.get("schedule_date") or {}).get("start_on")),
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _add_months(ms: int, months: int) -> int:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp() * 1000)


def occurrence_start(start: int, option: str, every: int, k: int) -> int:
    if option == "daily":
        return start + k * every * DAY_MS
    if option == "weekly":
        return start + k * every * 7 * DAY_MS
    if option == "monthly":
        return _add_months(start, k * every)
    return start


@dataclass(frozen=True, slots=True)
class Occurrence:
    index: int | None  # None: not started yet, or ended
    reason: str  # "" when index is set; "not_before" or "ended"
    next_start: int | None  # when the next occurrence begins (for deferral timers)


def current_occurrence(doc: dict[str, Any], now: int) -> Occurrence:
    section = doc.get("profile") or {}
    start = start_of(doc)
    option = section.get("repeatOption") or "none"
    every = int(section.get("repeatEvery") or 1)
    if start is None:
        start = 0
    if now < start:
        return Occurrence(None, "not_before", start)
    if option == "none":
        return Occurrence(0, "", None)
    k = 0
    while occurrence_start(start, option, every, k + 1) <= now:
        k += 1
        if k > 100_000:
            break
    ends_option = section.get("endsOption") or "never"
    ends = section.get("ends")
    if ends_option == "after" and isinstance(ends, int) and k >= ends:
        return Occurrence(None, "ended", None)
    if ends_option == "on":
        end_ms = parse_time(ends)
        if end_ms is not None and occurrence_start(start, option, every, k) > end_ms:
            return Occurrence(None, "ended", None)
    return Occurrence(k, "", occurrence_start(start, option, every, k + 1))


def window_minutes(option: str | None) -> tuple[int, int] | None:
    if not option or option == "anytime":
        return None
    try:
        first, last = option.split("-")
        h1, m1 = (int(x) for x in first.split(":"))
        h2, m2 = (int(x) for x in last.split(":"))
    except ValueError:
        return None
    return h1 * 60 + m1, h2 * 60 + m2


def minutes_until_open(option: str | None, local_minutes: int) -> int:
    """0 when the window is open now, else minutes until it opens."""
    window = window_minutes(option)
    if window is None:
        return 0
    begin, end = window
    if begin == end:
        return 0
    inside = (
        begin <= local_minutes < end
        if begin < end
        else (local_minutes >= begin or local_minutes < end)
    )
    if inside:
        return 0
    return (begin - local_minutes) % (24 * 60)


def local_minutes_of(now_ms: int, utc_offset_minutes: int) -> int:
    moment = datetime.fromtimestamp(now_ms / 1000, tz=UTC) + timedelta(minutes=utc_offset_minutes)
    return moment.hour * 60 + moment.minute
