"""Paging, sorting and filter parameters of list endpoints (§1), parsed into a PageRequest.

`page` is 0-based; `size` 1..500 (default 20); `sortBy` and `filter` keys are field paths that
each endpoint whitelists (an unknown one is 40001 naming it); `direction` is asc|desc. `filter`
is a JSON object; a list value means "any of". Sorting always ends with the object's uuid so
pages are stable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.errors import InvalidField

MAX_SIZE = 500
DEFAULT_SIZE = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class PageRequest:
    page: int = 0
    size: int = DEFAULT_SIZE
    sort_by: str | None = None
    descending: bool = False
    filters: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        return self.page * self.size


def _int_param(query: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidField(f"{key}: must be an integer, not {raw!r}") from exc
    if not lo <= value <= hi:
        raise InvalidField(f"{key}: must be between {lo} and {hi}, not {value}")
    return value


def parse_filter(raw: str | None, allowed: frozenset[str]) -> dict[str, list[Any]]:
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidField(f"filter: is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise InvalidField("filter: must be a JSON object of field path -> value or list")
    filters: dict[str, list[Any]] = {}
    for key, item in value.items():
        if key not in allowed:
            raise InvalidField(
                f"filter: unknown field {key!r}; allowed: {', '.join(sorted(allowed))}"
            )
        values = item if isinstance(item, list) else [item]
        for one in values:
            if isinstance(one, dict | list):
                raise InvalidField(f"filter.{key}: values must be strings, numbers or booleans")
        filters[key] = values
    return filters


def parse_page_request(
    query: Mapping[str, str], *, sortable: frozenset[str], filterable: frozenset[str]
) -> PageRequest:
    page = _int_param(query, "page", 0, 0, 10_000_000)
    size = _int_param(query, "size", DEFAULT_SIZE, 1, MAX_SIZE)
    sort_by = query.get("sortBy") or None
    if sort_by is not None and sort_by not in sortable:
        raise InvalidField(
            f"sortBy: cannot sort by {sort_by!r}; allowed: {', '.join(sorted(sortable))}"
        )
    direction = (query.get("direction") or "asc").lower()
    if direction not in ("asc", "desc"):
        raise InvalidField(f"direction: must be asc or desc, not {direction!r}")
    return PageRequest(
        page=page,
        size=size,
        sort_by=sort_by,
        descending=direction == "desc",
        filters=parse_filter(query.get("filter"), filterable),
    )
