"""Typed reading of a TOML document whose errors name the file, the line and the key.

tomllib gives no line numbers: `Locator` scans the text for the lines of table headers and
`key = value` lines (dotted keys, array-of-tables elements by index, multi-line arrays) and finds
keys inside inline tables by searching their value's lines. `Fields` wraps one table: unknown
keys fail at once (with the closest known key as a suggestion), then typed getters check each
value. Every failure is a ScenarioError, one line: `FILE:LINE: KEY: what is wrong`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from simulator.errors import SettingsError

Key = tuple[str | int, ...]
REQUIRED: Any = object()


class ScenarioError(SettingsError):
    """A scenario mistake: `FILE:LINE: KEY: message` (exit 2)."""

    hint = "fix the scenario file at that line (the schema: simulator/scenario.py)"

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def key_text(key: Key) -> str:
    """`kinds.kiosk.count`, `timeline[2].at_s`; keys that are not bare TOML keys are quoted."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            text += f".{shown}" if text else shown
    return text


# -- where a key is: a line scanner for the TOML subset scenarios use ------------------------


class Locator:
    """Lines of the keys of a TOML text, by key path (array-of-tables elements by index).

    Headers (`[a.b]`, `[[a]]`) and `key = value` lines (dotted keys too) are recorded with the
    lines their value spans; a key inside an inline table or a multi-line array is found by
    searching that span. A key the text lacks (a required one) is placed at its table."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.spans: dict[Key, tuple[int, int]] = {}
        self._scan()

    def _scan(self) -> None:
        table: Key = ()
        arrays: dict[Key, int] = {}
        multiline: str | None = None
        depth = 0
        owner: Key | None = None
        for number, raw in enumerate(self.lines, start=1):
            if multiline is not None:
                if multiline in raw:
                    multiline = None
                self._extend(owner, number)
                continue
            if depth > 0:
                depth += _bracket_balance(_strip_comment(raw))
                self._extend(owner, number)
                continue
            line = _strip_comment(raw).strip()
            if not line:
                continue
            if line.startswith("["):
                is_array = line.startswith("[[")
                inner = line[2:-2] if is_array else line[1:-1]
                table = self._header(_split_key(inner), arrays, is_array=is_array)
                for end in range(1, len(table) + 1):
                    self._record(table[:end], number)
                owner = None
                continue
            lhs, sep, rhs = _split_assignment(line)
            if not sep:
                continue
            owner = (*table, *_split_key(lhs))
            for end in range(len(table) + 1, len(owner) + 1):
                self._record(owner[:end], number)
            value = rhs.strip()
            for quote in ('"""', "'''"):
                if value.startswith(quote) and value.count(quote) == 1:
                    multiline = quote
            depth = _bracket_balance(value)

    @staticmethod
    def _header(keys: list[str], arrays: dict[Key, int], *, is_array: bool) -> Key:
        concrete: list[str | int] = []
        for i, key in enumerate(keys):
            concrete.append(key)
            path = tuple(concrete)
            if is_array and i == len(keys) - 1:
                arrays[path] = arrays.get(path, -1) + 1
                concrete.append(arrays[path])
            elif path in arrays:
                concrete.append(arrays[path])
        return tuple(concrete)

    def _record(self, key: Key, number: int) -> None:
        if key not in self.spans:
            self.spans[key] = (number, number)

    def _extend(self, owner: Key | None, number: int) -> None:
        if owner is not None and owner in self.spans:
            start, _ = self.spans[owner]
            self.spans[owner] = (start, number)

    def line_of(self, key: Key) -> int:
        """The line of `key`, or of its nearest enclosing key the text shows; 1 if none."""
        for end in range(len(key), 0, -1):
            span = self.spans.get(key[:end])
            if span is not None:
                return self._inside(span, key[end:])
        return 1

    def _inside(self, span: tuple[int, int], rest: Key) -> int:
        """Search a value's lines for the rest of the key (`[i].name`: name's (i+1)-th use)."""
        start, end = span
        line, skip = start, 0
        for part in rest:
            if isinstance(part, int):
                skip = part
                continue
            pattern = re.compile(rf"(?<![\w-]){re.escape(part)}\s*=")
            found = None
            for number in range(line, end + 1):
                hits = len(pattern.findall(_strip_comment(self.lines[number - 1])))
                if hits > skip:
                    found = number
                    break
                skip -= hits
            if found is None:
                return line
            line, skip = found, 0
        return line


def _strip_comment(line: str) -> str:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                continue
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def _bracket_balance(text: str) -> int:
    depth, quote = 0, ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return depth


def _split_assignment(line: str) -> tuple[str, str, str]:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "=":
            return line[:i], "=", line[i + 1 :]
    return line, "", ""


def _split_key(text: str) -> list[str]:
    parts, current, quote = [], "", ""
    for char in text.strip():
        if quote:
            if char == quote:
                quote = ""
            else:
                current += char
        elif char in "\"'":
            quote = char
        elif char == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


# -- typed reading ---------------------------------------------------------------------------


class Context:
    def __init__(self, file: str, locator: Locator) -> None:
        self.file, self.locator = file, locator

    def fail(self, key: Key, message: str) -> NoReturn:
        raise ScenarioError(self.file, self.locator.line_of(key), key_text(key), message)


def _kind_of(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return names.get(type(value), type(value).__name__)


class Fields:
    """One TOML table: unknown keys fail at once (with a suggestion), typed getters after."""

    def __init__(self, ctx: Context, key: Key, data: object, known: Iterable[str] = ()) -> None:
        if not isinstance(data, Mapping):
            ctx.fail(key, f"must be a table, not {_kind_of(data)}")
        self.ctx, self.key, self.data = ctx, key, data
        allowed = list(known)
        if allowed:
            for name in data:
                if name not in allowed:
                    close = difflib.get_close_matches(name, allowed, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    ctx.fail((*key, name), f"unknown key{hint}")

    def fail(self, name: str | int, message: str) -> NoReturn:
        self.ctx.fail((*self.key, name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = REQUIRED) -> Any:
        if name not in self.data:
            if default is REQUIRED:
                self.fail(name, "is required")
            return default
        return self.data[name]

    def string(self, name: str, default: Any = REQUIRED, *, choices: Iterable[str] = ()) -> Any:
        value = self.raw(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {_kind_of(value)}")
        allowed = tuple(choices)
        if allowed and value not in allowed:
            self.fail(name, f"must be one of {', '.join(allowed)}, not {value!r}")
        return value

    def name(self, name: str) -> str:
        value: str = self.string(name)
        if not value.strip():
            self.fail(name, "must not be empty")
        return value

    def integer(self, name: str, default: Any = REQUIRED, *, minimum: int | None = None) -> Any:
        value = self.raw(name, default)
        if value is default and name not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer, not {_kind_of(value)}")
        if minimum is not None and value < minimum:
            self.fail(name, _below(value, minimum))
        return value

    def number(
        self,
        name: str,
        default: Any = REQUIRED,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> Any:
        value = self.raw(name, default)
        if value is default and name not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"must be a number, not {_kind_of(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            self.fail(name, "must be a finite number")
        if positive and value <= 0:
            self.fail(name, f"must be greater than 0, not {value}")
        if minimum is not None and value < minimum:
            self.fail(name, _below(value, minimum))
        if maximum is not None and value > maximum:
            self.fail(name, f"must be at most {maximum}, not {value}")
        return float(value)

    def boolean(self, name: str, default: Any = REQUIRED) -> Any:
        value = self.raw(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, not {_kind_of(value)}")
        return value

    def array(self, name: str, default: Any = REQUIRED) -> Any:
        value = self.raw(name, default)
        if value is default and name not in self.data:
            return value
        if not isinstance(value, list):
            self.fail(name, f"must be an array, not {_kind_of(value)}")
        return value

    def strings(self, name: str) -> list[str]:
        values = self.array(name, [])
        for i, value in enumerate(values):
            if not isinstance(value, str):
                self.ctx.fail((*self.key, name, i), f"must be a string, not {_kind_of(value)}")
        return list(values)

    def table(self, name: str, known: Iterable[str] = (), *, required: bool = False) -> Fields:
        value = self.raw(name, REQUIRED if required else {})
        return Fields(self.ctx, (*self.key, name), value, known)

    def named_tables(self, name: str) -> list[tuple[str, Any]]:
        """The entries of a table of named tables (`[kinds.NAME]`), in the file's order."""
        return list(self.table(name).data.items())


def _below(value: float, minimum: float) -> str:
    if minimum == 0:
        return f"must not be negative, not {value}"
    return f"must be at least {minimum}, not {value}"
