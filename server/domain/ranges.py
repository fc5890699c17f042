"""HTTP Range for file downloads (pure): one `bytes=` range, or the whole file.

`bytes=a-b`, `bytes=a-` and `bytes=-n` are honoured; several ranges, another unit or a
malformed header are ignored (the whole file is sent, as RFC 9110 allows); a range that starts
at or past the end is unsatisfiable (416).
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None for the whole file; raise Unsatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first_raw, last_raw = match.groups()
    if not first_raw and not last_raw:
        return None
    if not first_raw:
        suffix = int(last_raw)
        if suffix == 0 or length == 0:
            raise Unsatisfiable
        return max(0, length - suffix), length - 1
    first = int(first_raw)
    if first >= length:
        raise Unsatisfiable
    last = int(last_raw) if last_raw else length - 1
    if last < first:
        return None
    return first, min(last, length - 1)
