"""Field extraction for request bodies and queries: each failure names the field (40000/40001).

`Fields(obj, "profile")` reads keys of a JSON object and raises InvalidField with the dotted path
(`profile.name: must be a non-empty string`). bool is never accepted where an int is asked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from server.errors import BadJson, InvalidField

MAX_STRING = 1024


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise BadJson("request body is empty; a JSON document is required")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadJson(f"request body is not valid JSON: {exc}") from exc


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
