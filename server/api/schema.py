"""Small typed schema constructors: each one writes its JSON Schema (2020-12) and compiles the
structural check of the same rule, so the document and the validator cannot disagree.

A node knows its JSON type, its bounds and its messages; `Obj` knows which properties are required
(an optional property also accepts null: the handlers treat null as absent). `Node.compile()`
turns a node into a plain function `check(value, path, depth)` that raises InvalidField with the
messages of server.domain.validation.Fields (`profile.name: must be a string, not a number`).
Nothing is checked that the schema does not say, except what JSON Schema cannot write, enforced
everywhere and stated in the document's description: containers nest at most MAX_JSON_DEPTH
levels, numbers are finite, strings are valid Unicode (no lone surrogate), and an integer is
written without a fraction (JSON Schema counts 2.0 as an integer; the parsers never did).
Keys a node does not name are free-form: a JsonValue (64-bit integers, strings of at most
MAX_FREE_STRING characters, keys of at most MAX_KEY). Patterns are written once and read by
both sides: ECMA-262 and Python `re` agree on the subset used here (character classes with \\u
escapes, anchors, alternation, counted repeats).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.domain.validation import join, json_type
from server.errors import InvalidField
from server.limits import INT_MAX, INT_MIN, MAX_FREE_STRING, MAX_JSON_DEPTH, MAX_KEY, MAX_STRING

Check = Callable[[Any, str, int], None]
"""A compiled rule: `check(value, path, depth)`; raises InvalidField naming `path`."""

JsonSchema = dict[str, Any]

# What str.strip() removes (str.isspace), as a character class both regex dialects read alike:
# ECMA-262's \s differs from Python's (\x1c-\x1f, \x85, \ufeff), so neither \s nor \S is used.
NOT_SPACE = (
    "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000]"
)


class Defs:
    """The named schemas a document refers to (`#/components/schemas/<name>`), in first use
    order."""

    def __init__(self, prefix: str = "#/components/schemas/") -> None:
        self.schemas: dict[str, JsonSchema] = {}
        self.prefix = prefix
        self._building: set[str] = set()

    def ref(self, name: str, node: Node) -> JsonSchema:
        if name not in self.schemas and name not in self._building:
            self._building.add(name)
            self.schemas[name] = node.schema(self)
            self._building.discard(name)
        return {"$ref": f"{self.prefix}{name}"}


class Node:
    """Base of the constructors: a JSON Schema writer and a check compiler."""

    def schema(self, defs: Defs) -> JsonSchema:
        raise NotImplementedError

    def compile(self) -> Check:
        raise NotImplementedError

    def json_types(self) -> frozenset[str]:
        """The JSON types this node can accept (used by Either to pick an alternative)."""
        raise NotImplementedError


def _describe(schema: JsonSchema, description: str) -> JsonSchema:
    if description:
        schema["description"] = description
    return schema


def _unicode(value: str, path: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidField(f"{path}: is not valid Unicode text (a lone surrogate)") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Str(Node):
    """A string: `max_len` characters at most; `non_blank`: something besides whitespace;
    `choices`: one of these; `pattern`: matches (anchor it yourself); `format`: annotation only."""

    max_len: int | None = MAX_STRING  # None: no bound (for answers)
    non_blank: bool = False
    choices: tuple[str, ...] = ()
    pattern: str = ""
    pattern_hint: str = ""  # what the pattern means, for the error message
    format: str = ""
    description: str = ""

    def schema(self, defs: Defs) -> JsonSchema:
        schema: JsonSchema = {"type": "string"}
        if self.choices:
            schema["enum"] = list(self.choices)
        else:
            if self.max_len is not None:
                schema["maxLength"] = self.max_len
            patterns = [p for p in (self.pattern, NOT_SPACE if self.non_blank else "") if p]
            if len(patterns) == 1:
                schema["pattern"] = patterns[0]
            elif patterns:
                schema["allOf"] = [{"pattern": p} for p in patterns]
        if self.format:
            schema["format"] = self.format
        return _describe(schema, self.description)

    def json_types(self) -> frozenset[str]:
        return frozenset({"string"})

    def compile(self) -> Check:
        max_len, choices = self.max_len or INT_MAX, frozenset(self.choices)
        listed = ", ".join(self.choices)
        non_blank = re.compile(NOT_SPACE) if self.non_blank else None
        pattern = re.compile(self.pattern) if self.pattern else None
        hint = self.pattern_hint or f"match {self.pattern}"

        def check(value: Any, path: str, depth: int) -> None:
            if type(value) is not str:
                raise InvalidField(f"{path}: must be a string, not {json_type(value)}")
            if not value.isascii():
                _unicode(value, path)
            if choices:
                if value not in choices:
                    raise InvalidField(f"{path}: must be one of {listed}, not {value!r}")
                return
            if non_blank is not None and non_blank.search(value) is None:
                raise InvalidField(f"{path}: must not be empty")
            if len(value) > max_len:
                raise InvalidField(f"{path}: longer than {max_len} characters")
            if pattern is not None and pattern.search(value) is None:
                raise InvalidField(f"{path}: must {hint}, not {value!r}")

        def plain(value: Any, path: str, depth: int) -> None:  # the common case, kept short
            if type(value) is not str:
                raise InvalidField(f"{path}: must be a string, not {json_type(value)}")
            if not value.isascii():
                _unicode(value, path)
            if len(value) > max_len:
                raise InvalidField(f"{path}: longer than {max_len} characters")

        return check if choices or non_blank or pattern else plain


@dataclass(frozen=True, slots=True, kw_only=True)
class Int(Node):
    """An integer (never a boolean, never a float) in [minimum, maximum], signed 64-bit at most."""

    minimum: int = INT_MIN
    maximum: int = INT_MAX
    description: str = ""

    def schema(self, defs: Defs) -> JsonSchema:
        schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        return _describe(schema, self.description)

    def json_types(self) -> frozenset[str]:
        return frozenset({"integer"})

    def compile(self) -> Check:
        low, high = max(self.minimum, INT_MIN), min(self.maximum, INT_MAX)

        def check(value: Any, path: str, depth: int) -> None:
            if type(value) is not int:
                raise InvalidField(f"{path}: must be an integer, not {json_type(value)}")
            if value < low:
                raise InvalidField(f"{path}: must be at least {low}")
            if value > high:
                raise InvalidField(f"{path}: must be at most {high}")

        return check


@dataclass(frozen=True, slots=True, kw_only=True)
class Num(Node):
    """A finite number (integer or not; never a boolean) in [minimum, maximum]."""

    minimum: float | None = None
    maximum: float | None = None
    description: str = ""

    def schema(self, defs: Defs) -> JsonSchema:
        bounds: JsonSchema = {}
        if self.minimum is not None:
            bounds["minimum"] = self.minimum
        if self.maximum is not None:
            bounds["maximum"] = self.maximum
        schema: JsonSchema = {
            "type": "number",
            **bounds,
            "anyOf": [  # integers (2.0 too, for JSON Schema) within signed 64 bits
                {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
                {"not": {"type": "integer"}},
            ],
        }
        return _describe(schema, self.description)

    def json_types(self) -> frozenset[str]:
        return frozenset({"integer", "number"})

    def compile(self) -> Check:
        low, high = self.minimum, self.maximum

        def check(value: Any, path: str, depth: int) -> None:
            kind = type(value)
            if kind is not int and kind is not float:
                raise InvalidField(f"{path}: must be a number, not {json_type(value)}")
            if kind is float and not math.isfinite(value):
                raise InvalidField(f"{path}: must be a finite number")
            if (kind is int or value.is_integer()) and not INT_MIN <= value <= INT_MAX:
                raise InvalidField(f"{path}: must be between {INT_MIN} and {INT_MAX}")
            if low is not None and value < low:
                raise InvalidField(f"{path}: must be at least {low}")
            if high is not None and value > high:
                raise InvalidField(f"{path}: must be at most {high}")

        return check


@dataclass(frozen=True, slots=True, kw_only=True)
class Bool(Node):
    description: str = ""

    def schema(self, defs: Defs) -> JsonSchema:
        return _describe({"type": "boolean"}, self.description)

    def json_types(self) -> frozenset[str]:
        return frozenset({"boolean"})

    def compile(self) -> Check:
        def check(value: Any, path: str, depth: int) -> None:
            if type(value) is not bool:
                raise InvalidField(f"{path}: must be true or false, not {json_type(value)}")

        return check


@dataclass(frozen=True, slots=True, kw_only=True)
class Null(Node):
    """Only null (for response schemas: a field that is always null today)."""

    def schema(self, defs: Defs) -> JsonSchema:
        return {"type": "null"}

    def json_types(self) -> frozenset[str]:
        return frozenset({"null"})

    def compile(self) -> Check:
        def check(value: Any, path: str, depth: int) -> None:
            if value is not None:
                raise InvalidField(f"{path}: must be null, not {json_type(value)}")

        return check


JSON_VALUE = "JsonValue"


def json_value_schema() -> JsonSchema:
    """components/schemas/JsonValue: any JSON value within the rules that hold everywhere
    (what `_free_form` checks; depth is said in the document's description)."""
    ref = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
    return {
        "description": "any JSON value: integers within signed 64 bits, strings of at most "
        f"{MAX_FREE_STRING} characters, keys of at most {MAX_KEY}",
        "anyOf": [
            {"type": ["boolean", "null"]},
            {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "string", "maxLength": MAX_FREE_STRING},
            {"type": "array", "items": ref},
            {
                "type": "object",
                "propertyNames": {"maxLength": MAX_KEY},
                "additionalProperties": ref,
            },
        ],
    }


def _free_form(value: Any, path: str, depth: int) -> None:
    """A JsonValue (json_value_schema), nested at most MAX_JSON_DEPTH levels from the body."""
    stack: list[tuple[Any, str, int]] = [(value, path, depth)]
    while stack:
        item, where, level = stack.pop()
        kind = type(item)
        if kind is dict:
            if level >= MAX_JSON_DEPTH:
                raise InvalidField(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
            for key, child in item.items():
                _key(key, where)
                stack.append((child, join(where, key), level + 1))
        elif kind is list:
            if level >= MAX_JSON_DEPTH:
                raise InvalidField(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, join(where, i), level + 1) for i, child in enumerate(item))
        elif kind is str:
            _unicode(item, where)
            if len(item) > MAX_FREE_STRING:
                raise InvalidField(f"{where}: longer than {MAX_FREE_STRING} characters")
        elif kind is int:
            if not INT_MIN <= item <= INT_MAX:
                raise InvalidField(f"{where}: must be between {INT_MIN} and {INT_MAX}")
        elif kind is float:
            if not math.isfinite(item):
                raise InvalidField(f"{where}: must be a finite number")
            if item.is_integer() and not INT_MIN <= item <= INT_MAX:  # JSON Schema: an integer
                raise InvalidField(f"{where}: must be between {INT_MIN} and {INT_MAX}")


def _key(key: str, where: str) -> None:
    _unicode(key, where or "body")
    if len(key) > MAX_KEY:
        raise InvalidField(f"{where or 'body'}: a key is longer than {MAX_KEY} characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class AnyJson(Node):
    """Any JSON value the handler keeps as given (device settings, extra keys): a JsonValue."""

    description: str = ""

    def schema(self, defs: Defs) -> JsonSchema:
        ref = defs.ref(JSON_VALUE, _JsonValue())
        return _describe({"allOf": [ref]}, self.description) if self.description else ref

    def json_types(self) -> frozenset[str]:
        return frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})

    def compile(self) -> Check:
        return _free_form


class _JsonValue(Node):
    def schema(self, defs: Defs) -> JsonSchema:
        schema = json_value_schema()
        prefix = defs.prefix
        for option in schema["anyOf"]:
            for key in ("items", "additionalProperties"):
                if key in option:
                    option[key] = {"$ref": f"{prefix}{JSON_VALUE}"}
        return schema


@dataclass(frozen=True, slots=True)
class Prop:
    """A property of an Obj: `required` ones reject null and absence alike ("is required",
    followed by `hint` when there is one)."""

    node: Node
    required: bool = False
    hint: str = ""
    nullable: bool = True  # False: null goes to `node` (an optional key that must not be null)


@dataclass(frozen=True, slots=True, kw_only=True)
class Obj(Node):
    """An object. `props` are checked in order (the order the handler reads them, so the first
    error is the one it would report); other keys are free-form unless `closed`."""

    props: Mapping[str, Node | Prop] = field(default_factory=dict)
    closed: bool = False
    description: str = ""

    def _props(self) -> list[tuple[str, Prop]]:
        return [(k, p if isinstance(p, Prop) else Prop(p)) for k, p in self.props.items()]

    def schema(self, defs: Defs) -> JsonSchema:
        properties: dict[str, JsonSchema] = {}
        required = []
        for key, prop in self._props():
            if prop.required:
                required.append(key)
            if prop.required or not prop.nullable:
                properties[key] = prop.node.schema(defs)
            else:
                properties[key] = nullable(prop.node.schema(defs))
        schema: JsonSchema = {"type": "object"}
        if properties:
            schema["properties"] = properties
        if required:
            schema["required"] = required
        if self.closed:
            schema["additionalProperties"] = False
        else:
            schema["propertyNames"] = {"maxLength": MAX_KEY}
            schema["additionalProperties"] = AnyJson().schema(defs)
        return _describe(schema, self.description)

    def json_types(self) -> frozenset[str]:
        return frozenset({"object"})

    def compile(self) -> Check:
        checks = [
            (key, prop.node.compile(), prop.required, f"; {prop.hint}" if prop.hint else "")
            for key, prop in self._props()
        ]
        strict_nulls = frozenset(k for k, p in self._props() if not p.required and not p.nullable)
        known = frozenset(key for key, _, _, _ in checks)
        allowed = ", ".join(sorted(known))
        closed = self.closed

        def check(value: Any, path: str, depth: int) -> None:
            if type(value) is not dict:
                raise InvalidField(f"{path or 'body'}: must be an object, not {json_type(value)}")
            if depth >= MAX_JSON_DEPTH:
                raise InvalidField(f"{path or 'body'}: nested deeper than {MAX_JSON_DEPTH} levels")
            inner = depth + 1
            prefix = f"{path}." if path else ""
            for key, child, required, hint in checks:
                item = value.get(key)
                if item is None:
                    if required:
                        raise InvalidField(f"{prefix}{key}: is required{hint}")
                    if key not in strict_nulls or key not in value:
                        continue
                child(item, prefix + key, inner)
            if len(value) <= len(checks) and known.issuperset(value):
                return  # no other key: the common case, checked in one set operation
            for key, item in value.items():
                if key in known:
                    continue
                if closed:
                    raise InvalidField(f"{path}: unknown field {key!r}; allowed: {allowed}")
                _key(key, path)
                _free_form(item, join(path, key), inner)

        return check


@dataclass(frozen=True, slots=True, kw_only=True)
class Arr(Node):
    """An array of `items`, `min_items`..`max_items` long."""

    items: Node
    min_items: int = 0
    max_items: int | None = 10_000  # None: no bound (for answers)
    description: str = ""

    def schema(self, defs: Defs) -> JsonSchema:
        schema: JsonSchema = {"type": "array", "items": self.items.schema(defs)}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        return _describe(schema, self.description)

    def json_types(self) -> frozenset[str]:
        return frozenset({"array"})

    def compile(self) -> Check:
        child, low, high = self.items.compile(), self.min_items, self.max_items or INT_MAX

        def check(value: Any, path: str, depth: int) -> None:
            if type(value) is not list:
                raise InvalidField(f"{path or 'body'}: must be an array, not {json_type(value)}")
            if depth >= MAX_JSON_DEPTH:
                raise InvalidField(f"{path or 'body'}: nested deeper than {MAX_JSON_DEPTH} levels")
            if len(value) < low:
                raise InvalidField(
                    f"{path or 'body'}: must not be empty"
                    if low == 1
                    else f"{path or 'body'}: fewer than {low} items"
                )
            if len(value) > high:
                raise InvalidField(f"{path or 'body'}: at most {high} items, got {len(value)}")
            inner = depth + 1
            for index, item in enumerate(value):
                child(item, join(path, index), inner)

        return check


_TYPE_OF = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class Either(Node):
    """One of several nodes of different JSON types (`int or string`); `what` names them in the
    error message. The alternative is chosen by the value's JSON type, so checks stay exact."""

    options: Sequence[Node]
    what: str = ""
    description: str = ""

    def schema(self, defs: Defs) -> JsonSchema:
        return _describe({"anyOf": [o.schema(defs) for o in self.options]}, self.description)

    def json_types(self) -> frozenset[str]:
        return frozenset().union(*(o.json_types() for o in self.options))

    def compile(self) -> Check:
        by_type: dict[str, Check] = {}
        for option in self.options:
            compiled = option.compile()
            for name in option.json_types():
                by_type.setdefault(name, compiled)
        what = self.what or " or ".join(sorted(self.json_types()))

        def check(value: Any, path: str, depth: int) -> None:
            chosen = by_type.get(_TYPE_OF.get(type(value), ""))
            if chosen is None:
                raise InvalidField(f"{path}: must be {what}, not {json_type(value)}")
            chosen(value, path, depth)

        return check


@dataclass(frozen=True, slots=True)
class Named(Node):
    """A node the document names once under components/schemas and refers to by `$ref`."""

    name: str
    node: Node

    def schema(self, defs: Defs) -> JsonSchema:
        return defs.ref(self.name, self.node)

    def json_types(self) -> frozenset[str]:
        return self.node.json_types()

    def compile(self) -> Check:
        return self.node.compile()


def nullable(schema: JsonSchema) -> JsonSchema:
    """`schema` or null (a property the handlers treat as absent when null)."""
    kind = schema.get("type")
    if isinstance(kind, str) and "enum" not in schema and "const" not in schema:
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list) and "null" in kind:
        return schema
    if schema == {} or {"type": "null"} in schema.get("anyOf", ()):
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def strings(*keys: str, max_len: int = MAX_STRING) -> dict[str, Node]:
    """Optional strings of one length bound, for objects with many of them."""
    return {key: Str(max_len=max_len) for key in keys}
