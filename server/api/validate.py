"""The structural checks of each operation, compiled once at import: query and path parameters,
and the JSON body (after parsing, before the handler's own parser runs).

A body whose top-level JSON type is wrong is BadJson (40000: `check-in body must be a JSON
object, not an array`, as server.domain.validation.expect_object says); anything below it is
InvalidField (40001) naming the field. Operations without a JSON body, and routes that are not
in the table (a test's own), are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.api.operations import Operation, by_route
from server.api.params import Reader, compile_params
from server.api.schema import Check
from server.domain.validation import json_type
from server.errors import BadJson


@dataclass(frozen=True, slots=True)
class Checks:
    """The compiled checks of one operation."""

    operation: Operation
    query: Reader | None
    path: Reader | None
    body: Check | None
    body_type: str  # "object" | "array" | "" (no JSON body)

    def check_params(self, query: Mapping[str, str], path: Mapping[str, str]) -> None:
        if self.path is not None:
            self.path(path)
        if self.query is not None:
            self.query(query)

    def check_body(self, value: Any) -> None:
        if self.body is None:
            return
        kind = type(value)
        if self.body_type == "object" and kind is not dict:
            raise BadJson(
                f"{self.operation.body_name} must be a JSON object, not {json_type(value)}"
            )
        if self.body_type == "array" and kind is not list:
            raise BadJson(
                f"{self.operation.body_name} must be a JSON array, not {json_type(value)}"
            )
        self.body(value, "", 0)


def compile_operation(operation: Operation) -> Checks:
    query = tuple(p for p in operation.params if p.where == "query")
    path = tuple(p for p in operation.params if p.where == "path")
    body_type = ""
    if operation.body is not None:
        types = operation.body.json_types()
        body_type = "object" if "object" in types else "array" if "array" in types else ""
    return Checks(
        operation=operation,
        query=compile_params(query) if query else None,
        path=compile_params(path) if path else None,
        body=operation.body.compile() if operation.body is not None else None,
        body_type=body_type,
    )


CHECKS: dict[tuple[str, str], Checks] = {
    key: compile_operation(op) for key, op in by_route().items()
}


def checks_for(method: str, path: str) -> Checks | None:
    """The checks of the operation at (method, route path), if it is in the table."""
    return CHECKS.get((method, path))
