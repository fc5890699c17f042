"""HTTP Range for file downloads (pure): one `bytes=` range, or the whole file.

`bytes=a-b`, `bytes=a-` and `bytes=-n` are honoured; several ranges, another unit or a
malformed header are ignored (the whole file is sent, as RFC 9110 allows); a range that starts
at or past the end is unsatisfiable (416). Positions are ASCII digits only (RFC 9110's DIGIT:
str.isdigit and int() also take Arabic-Indic or full-width digits, which make the header
malformed here); a position longer than RANGE_MAX_DIGITS (server/limits.py) is past any file
and is never given to int() (5,000 digits raised ValueError: a 500).
"""

from __future__ import annotations

import re

from server.limits import RANGE_MAX_DIGITS

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)
_PAST_ANY_FILE = 10**RANGE_MAX_DIGITS


class Unsatisfiable(Exception):
    pass


def _position(digits: str) -> int:
    """The number `digits` say, or a number past any file's end when they are that many."""
    return _PAST_ANY_FILE if len(digits.lstrip("0")) > RANGE_MAX_DIGITS else int(digits)


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None for the whole file; raise Unsatisfiable."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip(" \t").replace(" ", ""))
    if match is None:
        return None
    first_raw, last_raw = match.groups()
    if not first_raw and not last_raw:
        return None
    if not first_raw:
        suffix = _position(last_raw)
        if suffix == 0 or length == 0:
            raise Unsatisfiable
        return max(0, length - suffix), length - 1
    first = _position(first_raw)
    if first >= length:
        raise Unsatisfiable
    last = _position(last_raw) if last_raw else length - 1
    if last < first:
        return None
    return first, min(last, length - 1)
