"""Paging, sorting and filter parameters of list endpoints (§1), parsed into a PageRequest.

`page` is 0-based; `size` 1..500 (default 20); `sortBy` and `filter` keys are field paths that
each endpoint whitelists (an unknown one is 40001 naming it); `direction` is asc|desc. `filter`
is a JSON object; a list value means "any of". Sorting always ends with the object's uuid so
pages are stable.

Limits (server.limits): `size` 1..MAX_PAGE_SIZE, `page` 0..MAX_PAGE. `filter` is decoded like a
body (server.domain.validation.loads_json: no NaN/Infinity, no lone surrogate, nesting the parser
follows) and then holds only a scalar or a list of scalars per key: integers within
INT_MIN..INT_MAX, finite numbers, strings of at most MAX_STRING characters; every failure is 40001
naming `filter.<key>[<index>]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.domain.validation import check_strings, check_value, join, loads_json
from server.errors import InvalidField
from server.limits import MAX_PAGE, MAX_PAGE_SIZE, MAX_STRING

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
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(hi))):  # no ١٢, 1_0, -0
        raise InvalidField(f"{key}: must be an integer between {lo} and {hi}, not {raw[:32]!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise InvalidField(f"{key}: must be between {lo} and {hi}, not {value}")
    return value


def parse_filter(raw: str | None, allowed: frozenset[str]) -> dict[str, list[Any]]:
    if raw is None or raw.strip() == "":
        return {}
    value = loads_json(raw, "filter", not_json=InvalidField)
    check_strings(value, "filter")
    if not isinstance(value, dict):
        raise InvalidField("filter: must be a JSON object of field path -> value or list")
    filters: dict[str, list[Any]] = {}
    for key, item in value.items():
        if key not in allowed:
            raise InvalidField(
                f"filter: unknown field {key!r}; allowed: {', '.join(sorted(allowed))}"
            )
        values = item if isinstance(item, list) else [item]
        for index, one in enumerate(values):
            where = join(f"filter.{key}", index) if isinstance(item, list) else f"filter.{key}"
            if isinstance(one, dict | list):
                raise InvalidField(f"filter.{key}: values must be strings, numbers or booleans")
            if isinstance(one, str) and len(one) > MAX_STRING:
                raise InvalidField(f"{where}: longer than {MAX_STRING} characters")
            check_value(one, where)
        filters[key] = values
    return filters


def parse_page_request(
    query: Mapping[str, str], *, sortable: frozenset[str], filterable: frozenset[str]
) -> PageRequest:
    page = _int_param(query, "page", 0, 0, MAX_PAGE)
    size = _int_param(query, "size", DEFAULT_SIZE, 1, MAX_PAGE_SIZE)
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
