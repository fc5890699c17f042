"""The parts the operation table is made of: the Operation record (and its forms and links),
and the parameters many operations share (site, paging, sorting, `filter`, device lookup).

`filter` is built from the store's own whitelists (server.store FilterSpec: the kind of each
key says its values: strings, integers, booleans, or one time for before/after), so the
document and the check list exactly the keys the store accepts; at most MAX_FILTER_VALUES
values per key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from server.api import bodies
from server.api.params import Param, QInt, QJson, QStr, required_str
from server.api.schema import Arr, Bool, Either, Int, Node, Null, Obj, Prop, Str
from server.domain.ota_info import STRING_FIELDS, TYPES
from server.limits import MAX_FILTER_VALUES, MAX_PAGE, MAX_PAGE_SIZE, MAX_STRING
from server.store.query import FilterSpec

AuthKind = Literal["public", "key", "admin", "device", "file"]
Listing = Literal["plain", "sized", "paged"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FormField:
    """A multipart/form-data text field (the upload handler reads it); `json` when its text is a
    JSON document of that shape."""

    name: str
    node: Node = field(default_factory=Str)
    json: Node | None = None
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Form:
    """A multipart upload: the `file` part (bytes of `file_type`) and text fields."""

    file_type: str
    fields: tuple[FormField, ...] = ()


@dataclass(frozen=True, slots=True)
class Link:
    """An OpenAPI link from an answer to the operation `target` (stateful testing follows them):
    its parameters and request body as runtime expressions (`$response.body#/data/uuid`)."""

    target: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    id: str  # operationId; also what links name
    method: str
    path: str
    auth: AuthKind
    tag: str
    summary: str
    description: str = ""
    params: tuple[Param, ...] = ()
    body: Node | None = None
    body_name: str = "request body"  # what a wrong top-level JSON type is called (40000)
    form: Form | None = None
    data: Node | None = None  # the envelope's `data`; None with has_data: null
    has_data: bool = True
    listing: Listing = "plain"
    errors: tuple[int, ...] = ()
    download: bool = False  # bytes with Range (200/206/304/416), not the envelope
    websocket: bool = False
    raw: Node | None = None  # an answer that is not the envelope (the document itself)
    links: tuple[Link, ...] = ()


def _filter_value(kind: str) -> Node:
    scalar: Node = {
        "str": Str(),
        "int": Int(),
        "bool": Bool(),
    }.get(kind, Str())
    if kind in ("before", "after"):
        time = Either([Int(), Str(max_len=64)], what="an ISO-8601 time or epoch milliseconds")
        return Either(
            [time, Arr(items=time, min_items=1, max_items=1)],
            what="one ISO-8601 time or epoch milliseconds",
        )
    one = Either([scalar, Null()])
    return Either([one, Arr(items=one, max_items=MAX_FILTER_VALUES)])


def filter_param(specs: Mapping[str, FilterSpec], **extra: Node | Prop) -> QJson:
    """`filter`: a JSON object of the whitelisted field paths, each a value or a list (any of)."""
    props: dict[str, Node | Prop] = {}
    for key, spec in sorted(specs.items()):
        node = _filter_value(spec.kind)
        props[key] = Prop(node, nullable=spec.kind not in ("before", "after"))
    props.update(extra)
    return QJson(
        name="filter",
        node=Obj(props=props, closed=True),
        description="a JSON object: field path -> value, or a list of values (any of)",
    )


SITE = (
    QStr(name="siteUuid", node=Str(max_len=None), description="must be the caller's own site"),
    QStr(name="siteId", node=Str(max_len=None), description="the site's short name, the same"),
)
PAGING = (
    QInt(name="page", minimum=0, maximum=MAX_PAGE, description="0-based"),
    QInt(name="size", minimum=1, maximum=MAX_PAGE_SIZE, description="default 20"),
)
DIRECTION = QStr(
    name="direction",
    node=Str(
        pattern="^([aA][sS][cC]|[dD][eE][sS][cC])$",
        pattern_hint="be asc or desc",
    ),
)


def listing(sortable: Mapping[str, str], filters: QJson) -> tuple[Param, ...]:
    return (
        *PAGING,
        QStr(name="sortBy", node=Str(choices=tuple(sorted(sortable)))),
        DIRECTION,
        filters,
    )


DEVICE_LOOKUP = (
    QStr(name="deviceUuid", node=Str(max_len=MAX_STRING), description="or `uuid`"),
    QStr(name="uuid", node=Str(max_len=MAX_STRING)),
    QStr(name="serialNo", node=Str(max_len=MAX_STRING), description="when no uuid is given"),
)
UPLOAD_FIELDS = (
    FormField(name="name", node=Str(max_len=bodies.NAME_LEN), description="default: file name"),
    FormField(name="enable", node=Str(max_len=16), description="true|false (default true)"),
)
OTA_INFO_FORM = Obj(
    props={
        **{key: Str(max_len=None) for key in STRING_FIELDS},
        "type": Str(choices=TYPES),
        "abUpdate": Prop(Bool(), nullable=False),
        "buildDate": Int(minimum=0, description="seconds since the epoch"),
        "sdk": Prop(Either([Str(max_len=None), Int()]), nullable=False),
    },
    closed=True,
    description="fills or overrides what the package's metadata says",
)
UUID = required_str("uuid", max_len=MAX_STRING)
