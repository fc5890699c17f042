"""midm_common.wirejson, the agent's JSON on the wire (orjson; the standard library where orjson
refuses a value): what it writes, what it refuses, and that yesterday's bodies still encode."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from agent import protocol
from agent.errors import ProtocolError
from agent.protocol import Request, Response
from midm_common import wirejson


@pytest.mark.parametrize(
    "value",
    [
        {"states": {"rtcEnabled": False}, "power": {"ac": True, "battery": 55.5}},
        [{"id": "x", "n": "é", "emoji": "\U0001f600"}],
        {"big": 2**63 - 1, "negative": -(2**63), "float": 0.25, "nested": [[], {}, None]},
    ],
)
def test_dumps_is_compact_utf8_json_that_reads_back(value: Any) -> None:
    data = wirejson.dumps(value)
    assert json.loads(data) == value == wirejson.loads(data)
    assert b", " not in data and b": " not in data
    assert json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() == data


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"label": "a\udc80b"}, b'{"label":"a\\udc80b"}'),  # a lone surrogate: escaped
        ({"n": 10**30}, b'{"n":1000000000000000000000000000000}'),  # beyond 64 bits
        ({1: "x"}, b'{"1":"x"}'),  # a key that is not a string
    ],
)
def test_what_orjson_refuses_is_written_as_the_standard_library_did(
    value: Any, expected: bytes
) -> None:
    assert wirejson.dumps(value) == expected == json.dumps(value, separators=(",", ":")).encode()


def test_not_a_json_value_is_refused_as_before() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    for value in (object(), Point(1), datetime(2026, 1, 1, tzinfo=UTC), {1, 2}):
        with pytest.raises(TypeError):
            wirejson.dumps({"v": value})


def test_nan_and_infinity_write_as_null_which_reads_back() -> None:
    data = wirejson.dumps({"a": math.nan, "b": math.inf})
    assert data == b'{"a":null,"b":null}' and wirejson.loads(data) == {"a": None, "b": None}


@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"{", b'{"a":NaN}', b'{"a":1e400}', b"\xff\xfe", b"<html>", b'{"a":1} x'],
)
def test_loads_refuses_what_is_not_strict_json(data: bytes) -> None:
    with pytest.raises(wirejson.JSONDecodeError):
        wirejson.loads(data)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xff\xfe{}", "not JSON"),
        (b'{"result":true,"code":0,"data":NaN}', "not JSON"),
        (b"<!DOCTYPE html><p>proxy", "an HTML page"),
    ],
)
def test_an_answer_that_is_not_json_is_a_protocol_error_naming_it(body: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=f"checkin: the server answered HTTP 200 with {says}"):
        protocol.decode(Response(status=200, headers={}, body=body), "checkin")


def test_an_integer_beyond_64_bits_in_an_answer_is_not_an_integer() -> None:
    """orjson reads it as a float: the field that must be an integer refuses it."""
    answer = b'{"result":true,"code":0,"data":{"nextCheckinSeconds":60,"inventoryWanted":false,'
    answer += b'"profiles":[{"uuid":"p","updated":123456789012345678901234567890}]}}'
    data = protocol.decode(Response(status=200, headers={}, body=answer), "checkin")
    with pytest.raises(ProtocolError, match="unexpected value"):
        protocol.parse_checkin_reply(data)


def test_every_request_body_is_encoded_by_wirejson() -> None:
    request = Request(method="POST", path="/x", body=[{"label": "é\udc80"}])
    assert protocol.encode_body(request) == wirejson.dumps(request.body)
    assert protocol.encode_body(Request(method="GET", path="/x")) is None
