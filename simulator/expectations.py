"""Expectations: a small, safe expression language over a run's report (nothing is eval'd).

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand (("<" | "<=" | ">" | ">=" | "==" | "!=") operand)?
    operand    := NUMBER | "true" | "false" | metric | "(" expr ")"
    metric     := requests["ENDPOINT"].FIELD | convergence("PROFILE").FIELD | GROUP.FIELD

Metrics (METRICS below): `requests["checkin"].p99_ms` (p50_ms, p90_ms, p999_ms, max_ms, count,
errors), `errors.rate`, `errors.count`, `convergence("rollout").t99_s` (t50_s, t90_s, applied,
failed, deferred, scoped, fraction, from the agents' events; server_applied, server_failed: the
server's profile/status), `devices.saved_twice` (enrolled, failed, planned),
`consistency.mismatches`, `generator.saturated`, `events.lost`, `events.duplicated`,
`events.pending`, `herd.ratio` (peak_rps, steady_rps: simulator/herd.py),
`devices.duplicate_serials`, ...
`parse()` checks the text once (the scenario loader calls it: errors name the expression and the
column); `evaluate()` is pure. A metric the report lacks is None ("not measured"): comparisons
with it are unknown, and an unknown result fails, whatever `not`/`or` make of it (three-valued).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from simulator.figures import ADMIN, DEVICE_ENDPOINTS

Value = float | bool | None


class ExpectationError(ValueError):
    """An expectation that cannot be parsed or names what does not exist."""

    def __init__(self, name: str, expr: str, reason: str, column: int | None = None) -> None:
        where = "" if column is None else f" at column {column + 1}"
        label = f"expectation {name!r}: " if name else "expectation: "
        super().__init__(f"{label}{expr!r}: {reason}{where}")
        self.name, self.expr, self.reason, self.column = name, expr, reason, column


class Type(StrEnum):
    NUMBER = "number"
    BOOL = "boolean"


CONVERGENCE_FIELDS = (
    "t50_s", "t90_s", "t99_s", "applied", "failed", "deferred", "scoped", "fraction",
    "server_applied", "server_failed",
)  # fmt: skip
DEVICE_FIELDS = (
    "planned", "started", "enrolled", "failed", "saved_twice", "registered", "duplicate_serials",
)  # fmt: skip
# group -> field -> type; `requests` and `convergence` take a key
METRICS: Mapping[str, Mapping[str, Type]] = {
    "requests": dict.fromkeys(
        ("count", "errors", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"), Type.NUMBER
    ),
    "convergence": dict.fromkeys(CONVERGENCE_FIELDS, Type.NUMBER),
    "errors": {"rate": Type.NUMBER, "count": Type.NUMBER},
    "devices": dict.fromkeys(DEVICE_FIELDS, Type.NUMBER),
    "consistency": {"mismatches": Type.NUMBER, "checked": Type.NUMBER},
    "generator": {
        "saturated": Type.BOOL,
        "cpu_s": Type.NUMBER,
        "rss_mb": Type.NUMBER,
        "send_lag_p99_ms": Type.NUMBER,
    },
    "events": {"lost": Type.NUMBER, "duplicated": Type.NUMBER, "pending": Type.NUMBER},
    "herd": {"peak_rps": Type.NUMBER, "steady_rps": Type.NUMBER, "ratio": Type.NUMBER},
}
KEYED = {"requests": "[", "convergence": "("}
COMPARISONS: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


# --- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Literal:
    value: float | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    group: str
    key: str | None  # the endpoint or profile name of `requests[...]` / `convergence(...)`
    field: str

    @property
    def path(self) -> str:
        if self.group == "requests":
            return f'requests["{self.key}"].{self.field}'
        if self.group == "convergence":
            return f'convergence("{self.key}").{self.field}'
        return f"{self.group}.{self.field}"

    @property
    def type(self) -> Type:
        return METRICS[self.group][self.field]


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True, kw_only=True)
class Logic:
    op: str  # "and" | "or"
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Not:
    item: Node


Node = Literal | Metric | Compare | Logic | Not


@dataclass(frozen=True, slots=True, kw_only=True)
class Expression:
    name: str
    text: str
    root: Node

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """The metrics it reads, in order, each once."""
        found: dict[str, Metric] = {}
        _collect(self.root, found)
        return tuple(found.values())


def _collect(node: Node, found: dict[str, Metric]) -> None:
    if isinstance(node, Metric):
        found.setdefault(node.path, node)
    elif isinstance(node, Compare):
        _collect(node.left, found)
        _collect(node.right, found)
    elif isinstance(node, Logic):
        for item in node.items:
            _collect(item, found)
    elif isinstance(node, Not):
        _collect(node.item, found)


# --- parsing ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    | (?P<string>"[^"\\]*"|'[^'\\]*')
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op><=|>=|==|!=|<|>)
    | (?P<punct>[()\[\].])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number, string, name, op, punct, end
    text: str
    column: int


def _tokens(name: str, text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            column = position + len(text[position:]) - len(text[position:].lstrip())
            raise ExpectationError(name, text, f"unexpected {text[column]!r}", column)
        tokens.append(
            _Token(match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup))
        )
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, name: str, text: str, profiles: Collection[str] | None) -> None:
        self.name, self.text, self.profiles = name, text, profiles
        self.tokens = _tokens(name, text)
        self.at = 0

    def fail(self, reason: str, token: _Token | None = None) -> ExpectationError:
        token = token or self.tokens[self.at]
        return ExpectationError(self.name, self.text, reason, token.column)

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def expect(self, text: str) -> _Token:
        token = self.peek()
        if token.text != text or token.kind in ("string", "end"):
            shown = "the end" if token.kind == "end" else repr(token.text)
            raise self.fail(f"expected {text!r}, found {shown}")
        return self.take()

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail("empty expression")
        node = self.or_()
        if self.peek().kind != "end":
            raise self.fail(f"unexpected {self.peek().text!r}")
        if _type(node) is not Type.BOOL:
            raise self.fail(
                "the expression must be a comparison or a yes/no metric", self.tokens[0]
            )
        return node

    def or_(self) -> Node:
        return self.logic("or", self.and_)

    def and_(self) -> Node:
        return self.logic("and", self.not_)

    def logic(self, op: str, operand: Callable[[], Node]) -> Node:
        start = self.peek()
        items = [operand()]
        while self.peek().kind == "name" and self.peek().text == op:
            self.take()
            items.append(operand())
        if len(items) == 1:
            return items[0]
        for item in items:
            if _type(item) is not Type.BOOL:
                raise self.fail(f"'{op}' joins comparisons, not numbers", start)
        return Logic(op=op, items=tuple(items))

    def not_(self) -> Node:
        token = self.peek()
        if token.kind == "name" and token.text == "not":
            self.take()
            item = self.not_()
            if _type(item) is not Type.BOOL:
                raise self.fail("'not' takes a comparison, not a number", token)
            return Not(item=item)
        return self.comparison()

    def comparison(self) -> Node:
        left = self.operand()
        token = self.peek()
        if token.kind != "op":
            return left
        self.take()
        right = self.operand()
        types = (_type(left), _type(right))
        if token.text not in ("==", "!=") and Type.BOOL in types:
            raise self.fail(f"{token.text!r} compares numbers", token)
        if types[0] is not types[1]:
            raise self.fail(f"{token.text!r} compares a {types[0]} with a {types[1]}", token)
        if self.peek().kind == "op":
            raise self.fail("chained comparisons: join them with 'and'")
        return Compare(op=token.text, left=left, right=right)

    def operand(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Literal(value=float(token.text))
        if token.kind == "punct" and token.text == "(":
            node = self.or_()
            self.expect(")")
            return node
        if token.kind == "name" and token.text in ("true", "false"):
            return Literal(value=token.text == "true")
        if token.kind == "name" and token.text not in ("and", "or", "not"):
            return self.metric(token)
        shown = "the end" if token.kind == "end" else repr(token.text)
        raise self.fail(f"expected a number or a metric, found {shown}", token)

    def metric(self, head: _Token) -> Metric:
        group = head.text
        if group not in METRICS:
            raise self.fail(f"unknown metric {group!r} (known: {', '.join(METRICS)})", head)
        key = None
        if group in KEYED:
            opening = KEYED[group]
            self.expect(opening)
            literal = self.take()
            if literal.kind != "string":
                raise self.fail(
                    f"{group}{opening}...{_closing(opening)} takes a quoted name", literal
                )
            key = literal.text[1:-1]
            self.check_key(group, key, literal)
            self.expect(_closing(opening))
        self.expect(".")
        field = self.take()
        if field.kind != "name" or field.text not in METRICS[group]:
            known = ", ".join(METRICS[group])
            raise self.fail(f"unknown field {field.text!r} of {group} (known: {known})", field)
        return Metric(group=group, key=key, field=field.text)

    def check_key(self, group: str, key: str, token: _Token) -> None:
        if group == "requests" and key not in DEVICE_ENDPOINTS and not key.startswith(ADMIN):
            known = ", ".join(DEVICE_ENDPOINTS)
            raise self.fail(f"unknown endpoint {key!r} (known: {known}, admin:...)", token)
        if group == "convergence" and self.profiles is not None and key not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise self.fail(f"unknown profile {key!r} (the scenario saves: {known})", token)


def _closing(opening: str) -> str:
    return "]" if opening == "[" else ")"


def _type(node: Node) -> Type:
    if isinstance(node, Literal):
        return Type.BOOL if isinstance(node.value, bool) else Type.NUMBER
    if isinstance(node, Metric):
        return node.type
    return Type.BOOL


def parse(text: str, *, name: str = "", profiles: Collection[str] | None = None) -> Expression:
    """The expression `text` (named `name` in errors); with `profiles`, a convergence(...) of any
    other profile name is an error. Raises ExpectationError naming the expression."""
    return Expression(name=name, text=text, root=_Parser(name, text, profiles).parse())


# --- evaluation (pure) -------------------------------------------------------------------------


def value_of(metric: Metric, report: Mapping[str, Any]) -> Value:
    """The metric's value in a report (§9 keys); None when the report does not have it."""
    group, field = metric.group, metric.field
    if group == "requests":
        entry = _get(report, "requests", metric.key)
        if entry is None:
            return 0.0 if field in ("count", "errors") else None
        if field == "count":
            return _number(entry.get("count"))
        if field == "errors":
            return float(sum(entry.get("errors", {}).values()))
        return _number(_get(entry, "latency_ms", field.removesuffix("_ms")))
    if group == "convergence":
        entry = _get(report, "convergence", metric.key)
        if field.startswith("server_"):  # the server's profile/status, not the agents' events
            return _number(_get(entry, "server", field.removeprefix("server_")))
        if entry is None:
            return 0.0 if field in ("applied", "failed", "deferred", "fraction") else None
        return _number(entry.get(field))
    if group == "errors":
        count = sum(
            sum(entry.get("errors", {}).values()) for entry in report.get("requests", {}).values()
        )
        if field == "count":
            return float(count)
        total = sum(entry.get("count", 0) for entry in report.get("requests", {}).values())
        return 0.0 if total == 0 else count / total
    if group == "consistency":
        consistency = report.get("consistency")
        if not isinstance(consistency, Mapping):
            return None
        if field == "mismatches":
            mismatches = consistency.get("mismatches")
            return None if mismatches is None else float(len(mismatches))
        return _number(consistency.get(field))
    if group == "generator" and field == "send_lag_p99_ms":
        return _number(_get(report, "generator", "send_lag_ms", "p99"))
    if group == "generator" and field == "saturated":
        value = _get(report, "generator", "saturated")
        return value if isinstance(value, bool) else None
    return _number(_get(report, group, field))


def _get(data: Any, *keys: str | None) -> Any:
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def evaluate(node: Node, values: Mapping[str, Value]) -> Value:
    """The node's value given each metric's (by path); None = unknown (three-valued logic)."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Metric):
        return values.get(node.path)
    if isinstance(node, Compare):
        left, right = evaluate(node.left, values), evaluate(node.right, values)
        return None if left is None or right is None else COMPARISONS[node.op](left, right)
    if isinstance(node, Not):
        item = evaluate(node.item, values)
        return None if item is None else not item
    results = [evaluate(item, values) for item in node.items]
    decisive = node.op == "or"  # `or`: any True decides; `and`: any False does
    if decisive in results:
        return decisive
    return None if None in results else not decisive


class Named(Protocol):
    """What `check` reads of an expectation (plan.model.Expectation)."""

    @property
    def name(self) -> str: ...

    @property
    def expr(self) -> str: ...


def check(expectations: Iterable[Named], report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """[{name, expr, passed, observed}]: `observed` is the value of the metric it reads (a
    mapping path -> value when it reads several); `passed` only when the result is true."""
    results: list[dict[str, Any]] = []
    for expectation in expectations:
        expression = parse(expectation.expr, name=expectation.name)
        values = {m.path: value_of(m, report) for m in expression.metrics}
        observed: Any = values
        if len(values) == 1:
            (observed,) = values.values()
        results.append(
            {
                "name": expectation.name,
                "expr": expectation.expr,
                "passed": evaluate(expression.root, values) is True,
                "observed": _plain(observed),
            }
        )
    return results


def _plain(value: Any) -> Any:
    """Whole floats as ints in the report (3.0 -> 3), others to 6 significant digits."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value
