"""Decoding and field extraction for bodies and queries: each failure names the value (§1).

Limits (server.limits), enforced here for every body and stored document:
- `parse_json` (a request body) and `loads_json` (a query parameter such as `filter`) accept
  UTF-8 JSON only: invalid UTF-8 (also encoded surrogates), syntax errors and the `NaN`,
  `Infinity`, `-Infinity` literals are 40000 (40001 for a query). JSON the server could not
  store and read back is 40001 naming it: a lone surrogate escape (`"\\ud800"`), an integer
  of more than 4,300 digits, nesting past what the parser follows. Cheap on the hot path: one
  regex search over the raw bytes; strings are walked only when it finds a surrogate escape.
- `check_value(value, path)` is the one check of a decoded value against the limits: nesting
  at most MAX_JSON_DEPTH containers (the value itself is level 1), integers within
  INT_MIN..INT_MAX (signed 64 bits, what SQLite stores), finite floats, strings of valid
  Unicode of at most MAX_FREE_STRING characters, keys of at most MAX_KEY, at most
  MAX_JSON_VALUES values. It raises InvalidField naming the first offender in document order.
- `Fields(obj, "profile")` reads keys of a JSON object and raises InvalidField with the dotted
  path (`profile.name: must be a non-empty string`); strings at most MAX_STRING characters unless
  the parser says otherwise; every integer within INT_MIN..INT_MAX unless narrower; bool is never
  accepted where an int is asked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from server.errors import ApiError, BadJson, InvalidField
from server.limits import (
    INT_MAX,
    INT_MIN,
    MAX_FREE_STRING,
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
    MAX_KEY,
    MAX_STRING,
)

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = "\ufeff"
_INT_RANGE = f"must be between {INT_MIN} and {INT_MAX} (integers are signed 64-bit)"


def _refuse_constant(name: str) -> Any:
    raise BadJson(name)  # caught in loads_json, which names what was being read


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)  # one for all: cheap per body


def loads_json(text: str, what: str, *, not_json: type[ApiError] = BadJson) -> Any:
    """Decode `text`, the JSON of `what`: syntax errors and NaN/Infinity raise `not_json`,
    values the server cannot keep (too many digits, too deep) InvalidField."""
    try:
        return _DECODER.decode(text)
    except BadJson as exc:
        raise not_json(f"{what}: is not valid JSON ({exc.message} is not a JSON number)") from None
    except json.JSONDecodeError as exc:
        raise not_json(f"{what}: is not valid JSON ({exc})") from exc
    except RecursionError:
        raise InvalidField(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # int(): more than sys.get_int_max_str_digits() (4,300) digits
        raise InvalidField(
            f"{what}: an integer has more than 4300 digits; integers must fit in signed 64 bits"
        ) from exc


def parse_json(raw: bytes) -> Any:
    """A request body: UTF-8 JSON whose strings are all valid Unicode (see the module doc)."""
    if not raw.strip():
        raise BadJson("request body is empty; a JSON document is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(
            f"request body: is not valid JSON (not UTF-8: byte {raw[exc.start]:#04x} at offset "
            f"{exc.start})"
        ) from exc
    value = loads_json(text[1:] if text.startswith(_BOM) else text, "request body")
    if _SURROGATE_ESCAPE.search(raw):
        check_strings(value)
    return value


def _name(path: str) -> str:
    return path or "body"


_LONE = "holds a lone surrogate (not valid Unicode)"


def _bad_key(key: str, where: str) -> InvalidField:
    return InvalidField(f"{_name(where)}: key {key[:64]!r} {_LONE}")


def check_strings(value: Any, path: str = "") -> None:
    """Raise InvalidField naming the first string or key (in document order) holding a lone
    surrogate."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidField(f"{_name(where)}: {_LONE}")
        elif isinstance(item, dict):
            for key in item:
                if _SURROGATE.search(key):
                    raise _bad_key(key, where)
            stack.extend((child, join(where, key)) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((item[i], join(where, i)) for i in reversed(range(len(item))))


def check_value(value: Any, path: str = "", *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise InvalidField naming the first value (in document order; an object's keys before
    its values) of `value` outside the limits of the module doc; `path` names `value` itself.
    Iterative, so no nesting can exhaust the stack. Pure."""
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    count = 0
    while stack:
        item, where, level = stack.pop()
        count += 1
        if count > MAX_JSON_VALUES:
            raise InvalidField(f"{_name(path)}: holds more than {MAX_JSON_VALUES} values")
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidField(f"{_name(where)}: {_LONE}")
            if len(item) > MAX_FREE_STRING:
                raise InvalidField(f"{_name(where)}: longer than {MAX_FREE_STRING} characters")
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise InvalidField(f"{_name(where)}: {_INT_RANGE}")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidField(f"{_name(where)}: must be a finite number")
        elif isinstance(item, list | dict) and level > max_depth:
            raise InvalidField(f"{_name(where)}: nested deeper than {max_depth} levels")
        elif isinstance(item, list):
            stack.extend((item[i], join(where, i), level + 1) for i in reversed(range(len(item))))
        elif isinstance(item, dict):
            _check_keys(item, where)
            stack.extend((v, join(where, k), level + 1) for k, v in reversed(item.items()))
        else:
            raise InvalidField(f"{_name(where)}: is not a JSON value")


def _check_keys(obj: dict[Any, Any], where: str) -> None:
    for key in obj:
        if not isinstance(key, str):
            raise InvalidField(f"{_name(where)}: key {key!r} is not a string")
        if _SURROGATE.search(key):
            raise _bad_key(key, where)
        if len(key) > MAX_KEY:
            raise InvalidField(f"{_name(where)}: a key is longer than {MAX_KEY} characters")


def expect_object(value: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadJson(f"{what} must be a JSON object, not {json_type(value)}")
    return value


def expect_list(value: Any, what: str = "request body") -> list[Any]:
    if not isinstance(value, list):
        raise BadJson(f"{what} must be a JSON array, not {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


class Fields:
    """Typed reads of one JSON object, with `path` as the prefix of error messages."""

    def __init__(self, obj: Any, path: str = "") -> None:
        if not isinstance(obj, dict):
            raise InvalidField(f"{path or 'body'}: must be an object, not {json_type(obj)}")
        self.obj: dict[str, Any] = obj
        self.path = path

    def name(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def string(
        self,
        key: str,
        *,
        required: bool = False,
        default: str = "",
        allow_empty: bool = True,
        max_len: int = MAX_STRING,
    ) -> str:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidField(f"{self.name(key)}: is required")
            return default
        if not isinstance(value, str):
            raise InvalidField(f"{self.name(key)}: must be a string, not {json_type(value)}")
        if not allow_empty and not value.strip():
            raise InvalidField(f"{self.name(key)}: must not be empty")
        if len(value) > max_len:
            raise InvalidField(f"{self.name(key)}: longer than {max_len} characters")
        return value

    def optional_string(self, key: str, *, max_len: int = MAX_STRING) -> str | None:
        if self.obj.get(key) is None:
            return None
        return self.string(key, max_len=max_len)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self.obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidField(f"{self.name(key)}: must be true or false, not {json_type(value)}")
        return value

    def integer(
        self,
        key: str,
        *,
        default: int | None = None,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidField(f"{self.name(key)}: is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidField(f"{self.name(key)}: must be an integer, not {json_type(value)}")
        if minimum is not None and value < minimum:
            raise InvalidField(f"{self.name(key)}: must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise InvalidField(f"{self.name(key)}: must be at most {maximum}")
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidField(f"{self.name(key)}: {_INT_RANGE}")
        return value

    def obj_field(self, key: str, *, required: bool = False) -> Fields:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidField(f"{self.name(key)}: is required")
            value = {}
        return Fields(value, self.name(key))

    def array(self, key: str, *, required: bool = False, max_items: int = 10_000) -> list[Any]:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise InvalidField(f"{self.name(key)}: is required")
            return []
        if not isinstance(value, list):
            raise InvalidField(f"{self.name(key)}: must be an array, not {json_type(value)}")
        if len(value) > max_items:
            raise InvalidField(f"{self.name(key)}: more than {max_items} items")
        return value

    def string_list(self, key: str, *, max_items: int = 10_000) -> list[str]:
        items = self.array(key, max_items=max_items)
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                raise InvalidField(f"{join(self.name(key), index)}: must be a non-empty string")
        return list(items)


def query_bool(query: Mapping[str, str], key: str, *, default: bool | None = None) -> bool | None:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidField(f"{key}: must be true or false, not {raw!r}")


def query_required(query: Mapping[str, str], key: str) -> str:
    raw = query.get(key)
    if raw is None or not raw.strip():
        raise InvalidField(f"{key}: query parameter is required")
    return raw
