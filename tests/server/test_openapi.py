"""The OpenAPI document and the structural checks written from the same table (server.api).

The document is valid OpenAPI 3.1 and served as generated, public; every route of the app has
exactly one operation with the handler's own credentials; what the document calls valid passes
the compiled checks and what it calls invalid fails them (the same JSON Schema, two readers);
refusals are 40000/40001 in the parsers' message format, after authentication, and write nothing.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from server.api import bodies
from server.api.openapi import build_document, describe
from server.api.operations import OPERATIONS, Operation
from server.api.schema import NOT_SPACE, Arr, Either, Int, Num, Obj, Prop, Str
from server.api.validate import checks_for
from server.app import create_app
from server.config import ServerConfig
from server.errors import BadJson, InvalidField
from server.limits import INT_MAX, MAX_JSON_DEPTH
from tests.helpers import Client, Server

DOCUMENT = build_document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
WITH_BODY = [op for op in OPERATIONS if op.body is not None]


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON Schema inside the document (parameters, bodies, answers, components)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                yield value
            yield from _schemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schemas(item)


def test_the_document_is_valid_openapi_3_1() -> None:
    """The document passes the OpenAPI 3.1 meta-schema and each schema in it the 2020-12
    meta-schema; a broken copy does not (the check is not vacuous)."""
    assert DOCUMENT["openapi"] == "3.1.0"
    SCHEMA.validate()
    schemas = [*DOCUMENT["components"]["schemas"].values(), *_schemas(DOCUMENT["paths"])]
    assert len(schemas) > 100
    for schema in schemas:
        jsonschema_rs.meta.validate(schema)
    broken = copy.deepcopy(DOCUMENT)
    broken["paths"]["/ota/api/device/find"]["get"]["parameters"][0]["in"] = "body"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.meta.validate({"type": "strnig"})


def test_every_route_has_its_operation(tmp_path: Path) -> None:
    """The app's routes and the table are the same set (no endpoint undocumented or
    unchecked), and each handler's credentials mark is the operation's `auth`."""
    app = create_app(ServerConfig.for_db(tmp_path / "midm.sqlite"))
    routes: dict[tuple[str, str], str] = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        routes[(route.method, route.resource.canonical)] = getattr(
            route.handler, "auth_kind", "public"
        )
    table = {(op.method, op.path): op.auth for op in OPERATIONS}
    assert routes == table
    assert len({op.id for op in OPERATIONS}) == len(OPERATIONS)
    for op in OPERATIONS:
        assert checks_for(op.method, op.path) is checks_for(op.method, op.path)  # compiled once


async def test_the_document_is_served_public(server: Server, http: aiohttp.ClientSession) -> None:
    """GET /ota/api/openapi.json needs no credentials (a wrong key is ignored) and is exactly
    the generated document."""
    for headers in ({}, {"X-API-Key": "wrong", "Authorization": "Bearer nope"}):
        async with http.get(f"{server.base}/ota/api/openapi.json", headers=headers) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            assert json.loads(await response.read()) == DOCUMENT


def test_not_space_is_what_strip_removes() -> None:
    """`non_blank` strings: the pattern both regex dialects read matches exactly the strings
    str.strip() leaves non-empty (ECMA's \\s and Python's differ)."""
    pattern = re.compile(NOT_SPACE)
    spaces = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert (pattern.search(char) is None) == char.isspace(), hex(code)
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": NOT_SPACE})
    for char in [*spaces, "\ufeff", "a", "\x00", "\u200b"]:
        assert validator.is_valid(char) == (not char.isspace()), hex(ord(char))


def _refusal(operation: Operation, value: Any) -> str | None:
    checks = checks_for(operation.method, operation.path)
    assert checks is not None
    try:
        checks.check_body(value)
    except (BadJson, InvalidField) as refused:
        return refused.message
    return None


def _whole(value: Any) -> Any:
    """2.0 -> 2 (JSON Schema counts 2.0 as an integer; the server wants 2, as documented)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


VALIDATORS = {op.id: jsonschema_rs.validator_for(describe(op.body)) for op in WITH_BODY if op.body}


@pytest.mark.parametrize("operation", WITH_BODY, ids=lambda op: op.id)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_the_checks_read_the_schema_as_json_schema_does(
    operation: Operation, mode: GenerationMode, data: st.DataObject
) -> None:
    """For bodies schemathesis makes valid and invalid: the compiled check refuses exactly those
    JSON Schema (jsonschema-rs, the same document) calls invalid."""
    api_operation = SCHEMA[operation.path][operation.method]
    case = data.draw(api_operation.as_strategy(generation_mode=mode))
    if case.body is None or not isinstance(case.body, dict | list):
        return
    body = _whole(case.body)
    valid = VALIDATORS[operation.id].is_valid(body)
    refused = _refusal(operation, body)
    assert (refused is None) == valid, (operation.id, body, refused)


@pytest.mark.parametrize(
    ("node", "value", "message"),
    [
        (Obj(props={"name": Str()}), {"name": 5}, "x.name: must be a string, not a number"),
        (Obj(props={"name": Prop(Str(), required=True)}), {"name": None}, "x.name: is required"),
        (Obj(props={"n": Str(non_blank=True)}), {"n": " \t"}, "x.n: must not be empty"),
        (Obj(props={"n": Str(max_len=3)}), {"n": "abcd"}, "x.n: longer than 3 characters"),
        (Obj(props={"n": Str(choices=("a", "b"))}), {"n": "c"}, "x.n: must be one of a, b, not"),
        (Obj(props={"n": Int(minimum=1)}), {"n": 0}, "x.n: must be at least 1"),
        (Obj(props={"n": Int()}), {"n": 2**63}, f"x.n: must be at most {INT_MAX}"),
        (Obj(props={"n": Int()}), {"n": 2.0}, "x.n: must be an integer, not a number"),
        (Obj(props={"n": Int()}), {"n": True}, "x.n: must be an integer, not a boolean"),
        (Obj(props={"n": Num()}), {"n": float("inf")}, "x.n: must be a finite number"),
        (Obj(props={"a": Arr(items=Str(), max_items=1)}), {"a": ["", ""]}, "x.a: at most 1 items"),
        (Obj(props={"a": Arr(items=Str())}), {"a": [1]}, "x.a[0]: must be a string, not a number"),
        (Obj(props={"e": Either([Str(), Int()], what="a or b")}), {"e": []}, "x.e: must be a or b"),
        (Obj(props={"s": Str()}), {"s": "\ud800"}, "x.s: is not valid Unicode text"),
        (Obj(), {"free": {"deep": "\udfff"}}, "x.free.deep: is not valid Unicode text"),
        (Obj(), {"free": 2**64}, "x.free: must be between"),
        (Obj(), {"free": 1e20}, "x.free: must be between"),
        (Obj(), {"k" * 300: 1}, "x: a key is longer than 256 characters"),
        (Obj(closed=True, props={"a": Str()}), {"b": 1}, "x: unknown field 'b'; allowed: a"),
    ],
)
def test_refusals_name_the_field_as_the_parsers_do(node: Obj, value: Any, message: str) -> None:
    """Messages follow server.domain.validation.Fields: `<path>: <what is wrong>`."""
    with pytest.raises(InvalidField) as refused:
        node.compile()(value, "x", 0)
    assert refused.value.message.startswith(message), refused.value.message


def test_nesting_is_bounded_by_max_json_depth() -> None:
    """A body nests at most MAX_JSON_DEPTH containers, the body itself counted."""
    check = Obj().compile()
    deepest: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH - 1):
        deepest = [deepest]
    check({"k": deepest}, "", 0)
    with pytest.raises(InvalidField, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        check({"k": [deepest]}, "", 0)


# --- over HTTP: refused after authentication, in the envelope, nothing written -----------------


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({"profile": {"name": 5}}, 40001, "profile.name: must be a string, not a number"),
        ({"profile": {"name": "g"}, "enabled": 1}, 40001, "enabled: must be true or false"),
        ([{"profile": {"name": "g"}}], 40000, "request body must be a JSON object, not an array"),
        ({"profile": {"name": "g"}, "x": _nested(40)}, 40001, "nested deeper than 32 levels"),
        ({"profile": {"name": "g"}, "x": 2**64}, 40001, "x: must be between"),
    ],
)
async def test_group_save_refusals_write_nothing(
    admin: Client, body: Any, code: int, needle: str
) -> None:
    """Shape errors are the parsers' codes and messages; the site still has no group."""
    reply = await admin.post("/ota/api/device/group/save", body)
    assert (reply.status, reply.code) == (400, code), reply.body
    assert needle in reply.body["message"]
    assert (await admin.get("/ota/api/device/group/all")).data == []


async def test_profile_shapes_refused_and_nothing_stored(admin: Client) -> None:
    """A profile with an integer written 2.0, or settings nested past the limit, is 40001
    naming it; profile/all stays empty."""
    for body, needle in (
        ({"profile": {"repeatEvery": 2.0}}, "profile.repeatEvery: must be an integer, not a"),
        ({"settings": {"w": _nested(MAX_JSON_DEPTH)}}, "nested deeper than"),
        ({"scope": {"device": ["x" * 129]}}, "scope.device[0]: longer than 128 characters"),
    ):
        reply = await admin.post("/ota/api/profile/save", body)
        assert (reply.status, reply.code) == (400, 40001), reply.body
        assert needle in reply.body["message"]
    assert (await admin.get("/ota/api/profile/all")).data == []


async def test_what_was_accepted_still_is(admin: Client) -> None:
    """No tightening of what clients send today: unknown keys kept or ignored, null as absent."""
    reply = await admin.post(
        "/ota/api/device/group/save",
        {"profile": {"name": "g", "colour": "red"}, "enabled": None, "parentUuid": None, "x": [1]},
    )
    assert reply.status == 200, reply.body
    saved = await admin.post("/ota/api/profile/save", {"settings": {"volume": {"max": 3.5}}})
    assert saved.status == 200, saved.body


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"page": "\u0661"}, "page: must be an integer"),
        ({"page": "1_0"}, "page: must be an integer"),
        ({"size": "0"}, "size: must be between 1 and 500"),
        ({"direction": "sideways"}, "direction: must be asc or desc"),
        ({"sortBy": "secret"}, "sortBy: must be one of"),
        ({"filter": json.dumps({"serialNo": [None] * 1001})}, "filter.serialNo: at most 1000"),
        ({"filter": json.dumps({"nope": 1})}, "filter: unknown field 'nope'"),
        ({"filter": "[1]"}, "filter: must be a JSON object"),
    ],
)
async def test_query_shapes_are_40001(admin: Client, params: dict[str, str], needle: str) -> None:
    """Query parameters are checked against the table before the handler runs."""
    reply = await admin.get("/ota/api/device/find", **params)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert needle in reply.body["message"]


async def test_shapes_are_checked_after_credentials(server: Server, admin: Client) -> None:
    """Without credentials a malformed query or body is 40100, not a lesson in the API."""
    anonymous = Client(admin.http, server.base, key=None)
    assert (await anonymous.get("/ota/api/device/find", page="x")).code == 40100
    reply = await anonymous.post("/ota/api/device/group/save", {"profile": 1})
    assert reply.code == 40100


def test_every_json_body_names_its_top_level_type() -> None:
    """A wrong top-level type is 40000 with the body's name, as expect_object/list say."""
    for operation in WITH_BODY:
        assert operation.body is not None
        wrong: Any = {} if "array" in operation.body.json_types() else []
        with pytest.raises(BadJson, match=f"^{re.escape(operation.body_name)} must be a JSON"):
            _raise(operation, wrong)


def _raise(operation: Operation, value: Any) -> None:
    checks = checks_for(operation.method, operation.path)
    assert checks is not None
    checks.check_body(value)


def test_bodies_module_is_the_one_the_table_uses() -> None:
    """The table's bodies are server.api.bodies' (one definition, not a copy)."""
    by_id = {op.id: op.body for op in OPERATIONS}
    assert by_id["checkin"] is bodies.CHECKIN
    assert by_id["saveProfile"] is bodies.PROFILE_SAVE
