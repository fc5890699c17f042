"""Filtered, sorted, paged SELECTs shared by every list endpoint.

A `FilterSpec` maps a protocol field path to a column and a kind: `str`, `int`, `bool` (a list
means "any of"; a JSON null matches NULL), or `before`/`after` (one ISO-8601 time or epoch ms,
compared with < or >). Column names only ever come from these specs, never from the request.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.domain.paging import PageRequest
from server.domain.times import parse_iso
from server.errors import InvalidField

Kind = Literal["str", "int", "bool", "before", "after"]


@dataclass(frozen=True, slots=True)
class FilterSpec:
    column: str
    kind: Kind = "str"


def _time_value(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError as exc:
            raise InvalidField(f"filter.{key}: {value!r} is not an ISO-8601 time") from exc
    raise InvalidField(f"filter.{key}: must be an ISO-8601 time or epoch milliseconds")


def _check_type(key: str, kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind == "bool" and isinstance(value, bool):
        return int(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    expected = {"bool": "true or false", "int": "integers", "str": "strings"}[kind]
    raise InvalidField(f"filter.{key}: values must be {expected}")


def build_where(
    site_uuid: str,
    filters: Mapping[str, list[Any]],
    specs: Mapping[str, FilterSpec],
    site_column: str = "site_uuid",
) -> tuple[str, list[Any]]:
    clauses = [f"{site_column} = ?"]
    params: list[Any] = [site_uuid]
    for key, values in filters.items():
        spec = specs[key]
        if spec.kind in ("before", "after"):
            if len(values) != 1:
                raise InvalidField(f"filter.{key}: takes one time, not a list")
            clauses.append(f"{spec.column} {'<' if spec.kind == 'before' else '>'} ?")
            params.append(_time_value(key, values[0]))
            continue
        if not values:
            clauses.append("0")
            continue
        checked = [_check_type(key, spec.kind, v) for v in values]
        wanted = [v for v in checked if v is not None]
        parts = []
        if wanted:
            parts.append(f"{spec.column} IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if len(wanted) < len(checked):
            parts.append(f"{spec.column} IS NULL")
        clauses.append("(" + " OR ".join(parts) + ")")
    return " AND ".join(clauses), params


def fetch_page(
    conn: sqlite3.Connection,
    *,
    table: str,
    columns: str,
    site_uuid: str,
    request: PageRequest,
    filters: Mapping[str, FilterSpec],
    sortable: Mapping[str, str],
    default_sort: str,
    site_column: str = "site_uuid",
    rowid: str = "rowid",
    extra: tuple[str, list[Any]] | None = None,
) -> tuple[list[sqlite3.Row], int]:
    """One page of `table` for the site, and the total count of matching rows.

    `extra` is one more SQL condition with its bound values, written by the store itself.
    """
    where, params = build_where(site_uuid, request.filters, filters, site_column)
    if extra is not None:
        where = f"{where} AND ({extra[0]})"
        params = [*params, *extra[1]]
    total = int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0])
    if request.offset >= total:
        return [], total
    column = sortable[request.sort_by] if request.sort_by else default_sort
    direction = "DESC" if request.descending else "ASC"
    rows = conn.execute(
        f"SELECT {columns} FROM {table} WHERE {where} "
        f"ORDER BY {column} {direction}, {rowid} {direction} LIMIT ? OFFSET ?",
        (*params, request.size, request.offset),
    ).fetchall()
    return rows, total
