"""Query, path and header parameters: how each is read off the URL (a string) and checked.

- `QStr`: the raw text; a required one that is absent or blank is `X: query parameter is
  required` (as server.domain.validation.query_required says).
- `QInt`: ASCII digits with an optional sign, then the range (`page: must be between 0 and
  10000000, not 12345678901`); an empty value is absent (the handler's default applies).
- `QBool`: true/1/yes or false/0/no in any case (server.domain.validation.query_bool); empty is
  absent.
- `QJson`: a URL-encoded JSON document (`filter`), parsed here with the JSON rules of bodies (no
  NaN/Infinity, MAX_JSON_DEPTH, 64-bit integers) and checked against its node.
Headers are documented only (Range, If-None-Match): HTTP says a malformed one is ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from server.api.schema import NOT_SPACE, Check, Defs, JsonSchema, Node, Str
from server.domain.validation import json_type
from server.errors import InvalidField
from server.limits import INT_MAX, INT_MIN, MAX_STRING

Where = Literal["query", "path", "header"]
Reader = Callable[[Mapping[str, str]], None]

_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


BOOL_PATTERN = "^(" + "|".join(_any_case(w) for w in (*_TRUE, *_FALSE)) + ")?$"


class Param:
    """One named parameter: its OpenAPI object and its compiled reader."""

    name: str
    where: Where
    required: bool
    description: str

    def openapi(self, defs: Defs) -> JsonSchema:
        raise NotImplementedError

    def compile(self) -> Check:
        """`check(raw, name, 0)` for a present value (absence is handled by `compile_params`)."""
        raise NotImplementedError

    def base(self) -> JsonSchema:
        found: JsonSchema = {"name": self.name, "in": self.where}
        if self.required or self.where == "path":
            found["required"] = True
        elif self.where == "query":
            found["allowEmptyValue"] = True  # an empty value is the same as none
        if self.description:
            found["description"] = self.description
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class QStr(Param):
    name: str
    node: Str = field(default_factory=Str)
    required: bool = False
    where: Where = "query"
    description: str = ""

    def openapi(self, defs: Defs) -> JsonSchema:
        return {**self.base(), "schema": self.node.schema(defs)}

    def compile(self) -> Check:
        return self.node.compile()


@dataclass(frozen=True, slots=True, kw_only=True)
class QInt(Param):
    name: str
    minimum: int = INT_MIN
    maximum: int = INT_MAX
    required: bool = False
    where: Where = "query"
    description: str = ""

    def openapi(self, defs: Defs) -> JsonSchema:
        schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        return {**self.base(), "schema": schema}

    def compile(self) -> Check:
        low, high = self.minimum, self.maximum

        def check(raw: Any, path: str, depth: int) -> None:
            if _INTEGER.match(raw) is None:
                raise InvalidField(f"{path}: must be an integer, not {raw[:64]!r}")
            value = int(raw) if len(raw) <= 20 else None
            if value is None or not low <= value <= high:
                shown = raw if len(raw) <= 64 else raw[:64] + "..."
                raise InvalidField(f"{path}: must be between {low} and {high}, not {shown}")

        return check


@dataclass(frozen=True, slots=True, kw_only=True)
class QBool(Param):
    name: str
    required: bool = False
    where: Where = "query"
    description: str = ""

    def openapi(self, defs: Defs) -> JsonSchema:
        schema = {
            "type": "string",
            "pattern": BOOL_PATTERN,
            "description": "true, 1, yes or false, 0, no (any case); empty means absent",
        }
        return {**self.base(), "schema": schema}

    def compile(self) -> Check:
        words = frozenset((*_TRUE, *_FALSE))

        def check(raw: Any, path: str, depth: int) -> None:
            if raw.lower() not in words:
                raise InvalidField(f"{path}: must be true or false, not {raw[:64]!r}")

        return check


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True, kw_only=True)
class QJson(Param):
    """A JSON document in a query parameter (`filter`): parsed, then checked against `node`."""

    name: str
    node: Node
    required: bool = False
    where: Where = "query"
    description: str = ""

    def openapi(self, defs: Defs) -> JsonSchema:
        found = {k: v for k, v in self.base().items() if k != "allowEmptyValue"}  # not JSON
        return {**found, "content": {"application/json": {"schema": self.node.schema(defs)}}}

    def compile(self) -> Check:
        inner = self.node.compile()
        wanted = self.node.json_types()

        def check(raw: Any, path: str, depth: int) -> None:
            try:
                value = json.loads(raw, parse_constant=_no_constant)
            except RecursionError:
                raise InvalidField(f"{path}: is nested too deeply") from None
            except ValueError as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise InvalidField(f"{path}: is not valid JSON ({reason})") from None
            if "object" in wanted and type(value) is not dict:
                raise InvalidField(f"{path}: must be a JSON object, not {json_type(value)}")
            inner(value, path, 0)

        return check


def required_str(name: str, *, max_len: int = MAX_STRING, description: str = "") -> QStr:
    """A required string parameter: present and not blank."""
    return QStr(
        name=name,
        node=Str(max_len=max_len, non_blank=True),
        required=True,
        description=description,
    )


def compile_params(params: tuple[Param, ...]) -> Reader:
    """One function that checks a mapping of raw values (request.query or match_info)."""
    compiled = [(p.name, p.compile(), p.required) for p in params]
    not_space = re.compile(NOT_SPACE)

    def read(values: Mapping[str, str]) -> None:
        for name, check, required in compiled:
            raw = values.get(name)
            if raw is None or raw == "" or (required and not_space.search(raw) is None):
                if required:
                    raise InvalidField(f"{name}: query parameter is required")
                continue
            check(raw, name, 0)

    return read
