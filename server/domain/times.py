"""Time on the wire (§1): epoch ms <-> ISO-8601 UTC with milliseconds and `Z` (pure)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_iso(text: str) -> int:
    """ISO-8601 (with `Z`, an offset, or none = UTC) -> epoch ms; ValueError when unreadable."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
