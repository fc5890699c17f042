"""The pure JSON guards of server.domain.validation (issue 12): parse_json and check_value.

No sockets: table tests of each refusal and its message, and properties: check_value accepts
exactly what an independent oracle accepts, whatever it accepts survives the server's own output
and a strict re-read unchanged, and whatever it refuses is named by a path that exists.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.paging import parse_filter
from server.domain.validation import Fields, check_value, parse_json
from server.errors import BadJson, InvalidField
from server.limits import (
    INT_MAX,
    INT_MIN,
    MAX_FREE_STRING,
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
    MAX_KEY,
)
from server.wire import dumps


def nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "error", "needle"),
    [
        (b'{"w":NaN}', BadJson, "NaN is not a JSON number"),
        (b'{"w":Infinity}', BadJson, "Infinity is not a JSON number"),
        (b'{"w":-Infinity}', BadJson, "-Infinity is not a JSON number"),
        (b'{"w":"\xed\xa0\x80"}', BadJson, "not UTF-8: byte 0xed at offset 6"),
        (b'{"w":"\xff"}', BadJson, "not UTF-8"),
        (b'{"w":"\\ud800"}', InvalidField, "w: holds a lone surrogate"),
        (b'{"w":["ok","\\udfff"]}', InvalidField, "w[1]: holds a lone surrogate"),
        (b'{"w":"\\ud800x\\udc00"}', InvalidField, "w: holds a lone surrogate"),
        (b'{"\\ud800":1}', InvalidField, "body: key '\\ud800' holds a lone surrogate"),
        (b'{"w":1' + b"0" * 4300 + b"}", InvalidField, "more than 4300 digits"),
        (b"[" * 100_000 + b"]" * 100_000, InvalidField, "nested deeper than 32 levels"),
        (b"{bad", BadJson, "request body: is not valid JSON"),
        (b"  ", BadJson, "empty"),
    ],
)
def test_parse_json_refusals(raw: bytes, error: type[Exception], needle: str) -> None:
    """Not JSON (NaN/Infinity literals, bad UTF-8, syntax) is 40000; JSON the server could not
    keep (lone surrogates, 4,300+ digits, nesting the parser cannot follow) is 40001, named."""
    with pytest.raises(error) as raised:
        parse_json(raw)
    assert type(raised.value) is error
    assert needle in str(raised.value)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"w":"\\ud83d\\ude00"}', {"w": "\U0001f600"}),  # an escaped pair is one character
        (b'{"w":"\\\\ud800"}', {"w": "\\ud800"}),  # an escaped backslash, not a surrogate
        (b'\xef\xbb\xbf{"w":1}', {"w": 1}),  # a UTF-8 byte-order mark is tolerated
        (b'{"w":1e400}', {"w": math.inf}),  # a number: check_value refuses it where stored
        (b'{"w":9223372036854775808}', {"w": 2**63}),  # likewise
    ],
)
def test_parse_json_accepts(raw: bytes, value: Any) -> None:
    assert parse_json(raw) == value


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"w": INT_MAX + 1}, "w: must be between"),
        ({"w": [INT_MIN - 1]}, "w[0]: must be between"),
        ({"w": math.inf}, "w: must be a finite number"),
        ({"w": -math.inf}, "w: must be a finite number"),
        ({"w": math.nan}, "w: must be a finite number"),
        ({"w": "\ud800"}, "w: holds a lone surrogate"),
        ({"w": "x" * (MAX_FREE_STRING + 1)}, f"w: longer than {MAX_FREE_STRING}"),
        ({"k" * (MAX_KEY + 1): 1}, f"body: a key is longer than {MAX_KEY}"),
        ({"w": nested(MAX_JSON_DEPTH)}, "w" + "[0]" * (MAX_JSON_DEPTH - 1) + ": nested deeper"),
        ({"w": [0] * MAX_JSON_VALUES}, f"body: holds more than {MAX_JSON_VALUES} values"),
        ({"w": {1, 2}}, "w: is not a JSON value"),
        ({"a": [1, 2**63], "b": math.inf}, "a[1]: "),  # the first in document order
        ({"a": {"b": math.inf}, "\ud800": 1}, "body: key"),  # keys before values
    ],
)
def test_check_value_refusals(value: Any, needle: str) -> None:
    with pytest.raises(InvalidField) as raised:
        check_value(value)
    assert needle in raised.value.message


def test_check_value_limits_are_inclusive() -> None:
    """The limits themselves are accepted: 64-bit extremes, 32 levels, the longest string."""
    check_value(
        {
            "ints": [INT_MIN, INT_MAX],
            "deep": nested(MAX_JSON_DEPTH - 1),
            "s": "x" * MAX_FREE_STRING,
            "k" * MAX_KEY: 1.5,
        }
    )
    check_value(nested(MAX_JSON_DEPTH), "w")
    with pytest.raises(InvalidField, match=r"^w\[0\]\[0\]: nested deeper than 2"):
        check_value([[[]]], "w", max_depth=2)


def test_fields_integers_are_64_bit() -> None:
    """Every Fields.integer is bounded by INT_MIN..INT_MAX, also where no bound is given."""
    fields = Fields({"n": 2**63, "m": -(2**63) - 1, "ok": INT_MAX}, "x")
    for key in ("n", "m"):
        with pytest.raises(InvalidField, match=rf"^x\.{key}: must be between"):
            fields.integer(key)
    assert fields.integer("ok") == INT_MAX


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("[" * 1000 + "]" * 1000, "filter: nested deeper"),
        ('{"a":NaN}', "filter: is not valid JSON (NaN"),
        ('{"a":"\\ud800"}', "filter.a: holds a lone surrogate"),
        (f'{{"a":[1,{2**63}]}}', "filter.a[1]: must be between"),
        ('{"a":1e999}', "filter.a: must be a finite number"),
        ('{"a":"' + "x" * 1025 + '"}', "filter.a: longer than 1024"),
        ('{"a":[[1]]}', "filter.a: values must be"),
    ],
)
def test_filter_refusals(raw: str, needle: str) -> None:
    """`filter` (a query parameter) is 40001 for every refusal, naming the key."""
    with pytest.raises(InvalidField) as raised:
        parse_filter(raw, frozenset({"a"}))
    assert type(raised.value) is InvalidField
    assert needle in raised.value.message


# --- Properties ---------------------------------------------------------------------------------


def oracle(value: Any, level: int = 1) -> bool:
    """check_value's rules written again, recursively and independently."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return bool(INT_MIN <= value <= INT_MAX)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return len(value) <= MAX_FREE_STRING
    if level > MAX_JSON_DEPTH:
        return False
    if isinstance(value, list):
        return all(oracle(item, level + 1) for item in value)
    assert isinstance(value, dict)
    return all(oracle(k) and len(k) <= MAX_KEY for k in value) and all(
        oracle(v, level + 1) for v in value.values()
    )


KEYS = st.text(alphabet="abcxyz", min_size=1, max_size=3)
TEXT = st.text(alphabet=st.characters(codec=None, categories=("L", "N", "P", "Zs", "Cs")))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)


def _deepen(value: Any, depth: int) -> Any:
    return nested(depth, value)


JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS, children, max_size=4)
        | st.builds(_deepen, children, st.integers(min_value=0, max_value=40))
    ),
    max_leaves=20,
)


def resolve(value: Any, path: str) -> Any:
    """The value `path` (`a.b[0]`, keys from KEYS) names inside `value`."""
    for key, index in re.findall(r"\.?([a-z]+)|\[(\d+)\]", path):
        value = value[key] if key else value[int(index)]
    return value


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_check_value_agrees_with_the_oracle(value: Any) -> None:
    """Accepted iff the oracle accepts; accepted values survive the server's strict output and a
    strict re-read unchanged; a refusal names a path that exists in the value."""
    try:
        check_value(value)
    except InvalidField as refused:
        assert not oracle(value)
        path = refused.message.split(": ", 1)[0]
        if path != "body":
            resolve(value, path)  # raises if the path names nothing
        return
    assert oracle(value)
    text = dumps(value)  # allow_nan=False: raises on anything non-finite
    assert parse_json(text.encode("utf-8")) == value


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_parse_json_reads_what_clients_send(value: Any) -> None:
    """A client's JSON (Python's default: non-ASCII escaped) reads as a lenient parser reads it,
    except NaN/Infinity (40000) and a string that decodes to a lone surrogate (40001)."""
    raw = json.dumps(value).encode("ascii")
    lenient = json.loads(raw)
    if any(not math.isfinite(v) for v in _walk(lenient) if isinstance(v, float)):
        with pytest.raises(BadJson):
            parse_json(raw)
    elif any(isinstance(v, str) and re.search("[\ud800-\udfff]", v) for v in _walk(lenient)):
        with pytest.raises(InvalidField, match="lone surrogate"):
            parse_json(raw)
    else:
        assert parse_json(raw) == lenient


def _walk(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, list):
        for item in value:
            out += _walk(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            out += [key, *_walk(item)]
    return out
