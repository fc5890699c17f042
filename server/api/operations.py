"""The operation table: every endpoint of the server, once (method, path, credentials, parameters,
body, answer). server.api.openapi writes the document from it and server.api.validate compiles
the structural checks from it; server.app's routes are checked against it by a test.

Errors every operation may answer are added by the generator: 400 (what is sent), 503 (busy or
shutting down), and with credentials 401, and 403 for a `siteUuid`/`siteId` of another site.
`errors` lists the others. Paged lists take PAGING plus their `filter` and `sortBy`, both built
from the store's own whitelists (an unknown key is 40001, as the store says).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from server.api import bodies, models
from server.api.params import Param, QBool, QInt, QJson, QStr, required_str
from server.api.schema import Arr, Bool, Either, Int, Node, Null, Obj, Prop, Str
from server.domain.ota_info import STRING_FIELDS, TYPES
from server.limits import MAX_FILTER_VALUES, MAX_PAGE, MAX_PAGE_SIZE, MAX_STRING
from server.store import catalog, devices, profiles, reports
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

GROUPS, DEVICES, CATALOG, FILES, PROFILES, AGENT, AUTH = (
    "groups",
    "devices",
    "catalog",
    "files",
    "profiles",
    "device API",
    "auth",
)
API = "/ota/api"

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        id="login",
        method="POST",
        path="/portal/V1/auth",
        auth="public",
        tag=AUTH,
        summary="Log in: an admin bearer token",
        description="An X-API-Key sent along must be a key of the account's site.",
        body=bodies.LOGIN,
        data=models.TOKEN,
        errors=(401, 429),
    ),
    Operation(
        id="tokenVerify",
        method="GET",
        path="/portal/V1/auth/token-verify",
        auth="admin",
        tag=AUTH,
        summary="Who the bearer token is, and for how long",
        data=models.TOKEN_VERIFY,
    ),
    Operation(
        id="logout",
        method="GET",
        path="/portal/V1/logout",
        auth="admin",
        tag=AUTH,
        summary="Revoke the bearer token",
        has_data=False,
    ),
    Operation(
        id="saveGroup",
        method="POST",
        path=f"{API}/device/group/save",
        auth="admin",
        tag=GROUPS,
        summary="Create a group, or update the one named by `uuid`",
        body=bodies.GROUP_SAVE,
        data=models.DEVICE_GROUP,
        errors=(404,),
        links=(Link("findGroup", {"uuid": "$response.body#/data/uuid"}),),
    ),
    Operation(
        id="allGroups",
        method="GET",
        path=f"{API}/device/group/all",
        auth="admin",
        tag=GROUPS,
        summary="Every group of the site",
        data=Arr(items=models.DEVICE_GROUP, max_items=None),
    ),
    Operation(
        id="findGroup",
        method="GET",
        path=f"{API}/device/group/findBy",
        auth="admin",
        tag=GROUPS,
        summary="One group",
        params=(UUID,),
        data=models.DEVICE_GROUP,
        errors=(404,),
    ),
    Operation(
        id="deviceExists",
        method="GET",
        path=f"{API}/device/exists",
        auth="admin",
        tag=DEVICES,
        summary="Whether a serial is registered in the site",
        params=(required_str("serialNo"),),
        data=Bool(),
    ),
    Operation(
        id="saveDevices",
        method="POST",
        path=f"{API}/device/save",
        auth="admin",
        tag=DEVICES,
        summary="Register devices; a serial saved again is reset (states, token, progress)",
        params=(
            QStr(name="licenseModelUuid", node=Str(max_len=MAX_STRING)),
            QBool(name="autoRenew"),
        ),
        body=bodies.DEVICE_SAVE,
        body_name="device save body",
        has_data=False,
        errors=(404,),
    ),
    Operation(
        id="findDevice",
        method="GET",
        path=f"{API}/device/findBy",
        auth="admin",
        tag=DEVICES,
        summary="One device, by uuid or serial",
        params=DEVICE_LOOKUP,
        data=models.DEVICE,
        errors=(404,),
    ),
    Operation(
        id="findDevices",
        method="GET",
        path=f"{API}/device/find",
        auth="admin",
        tag=DEVICES,
        summary="Devices, paged",
        params=listing(devices.SORTABLE, filter_param(devices.FILTERS)),
        data=Arr(items=models.DEVICE, max_items=MAX_PAGE_SIZE),
        listing="paged",
    ),
    Operation(
        id="installedApps",
        method="GET",
        path=f"{API}/device/app/installed",
        auth="admin",
        tag=DEVICES,
        summary="The app inventory a device reported",
        params=DEVICE_LOOKUP,
        data=models.APP_INVENTORY,
        errors=(404,),
    ),
    Operation(
        id="appStatus",
        method="GET",
        path=f"{API}/device/app/status",
        auth="admin",
        tag=DEVICES,
        summary="Whether one package is installed on a device, and which version",
        params=(required_str("packageName"), *DEVICE_LOOKUP),
        data=models.APP_STATUS,
        errors=(404,),
    ),
    Operation(
        id="findLogs",
        method="GET",
        path=f"{API}/logs/find",
        auth="admin",
        tag=DEVICES,
        summary="Events reported by devices, paged (`filter.forWhat`: a device or profile uuid)",
        params=listing(
            reports.LOG_SORTABLE,
            filter_param(
                reports.LOG_FILTERS,
                forWhat=Prop(
                    Either(
                        [Str(), Arr(items=Str(), min_items=1, max_items=1)],
                        what="one device or profile uuid",
                    ),
                    nullable=False,
                ),
            ),
        ),
        data=Arr(items=models.EVENT, max_items=MAX_PAGE_SIZE),
        listing="paged",
    ),
    Operation(
        id="uploadApp",
        method="POST",
        path=f"{API}/app/upload",
        auth="admin",
        tag=CATALOG,
        summary="Upload a signed APK (identical bytes again: the existing App)",
        form=Form(file_type="application/vnd.android.package-archive", fields=UPLOAD_FIELDS),
        data=models.APP,
        errors=(409, 413),
        links=(Link("download", {"fileUuid": "$response.body#/data/fileUuid"}),),
    ),
    Operation(
        id="allApps",
        method="GET",
        path=f"{API}/app/all",
        auth="admin",
        tag=CATALOG,
        summary="Every app of the site",
        data=Arr(items=models.APP, max_items=None),
        listing="sized",
    ),
    Operation(
        id="findApps",
        method="GET",
        path=f"{API}/app/find",
        auth="admin",
        tag=CATALOG,
        summary="Apps, paged",
        params=listing(catalog.APP_SORTABLE, filter_param(catalog.APP_FILTERS)),
        data=Arr(items=models.APP, max_items=MAX_PAGE_SIZE),
        listing="paged",
    ),
    Operation(
        id="uploadOta",
        method="POST",
        path=f"{API}/ota/upload",
        auth="admin",
        tag=CATALOG,
        summary="Upload an OTA package (its metadata read; `otaInfo` fills or overrides it)",
        form=Form(
            file_type="application/zip",
            fields=(
                *UPLOAD_FIELDS,
                FormField(name="otaInfo", node=Str(max_len=None), json=OTA_INFO_FORM),
            ),
        ),
        data=models.OTA,
        errors=(409, 413),
        links=(Link("download", {"fileUuid": "$response.body#/data/fileUuid"}),),
    ),
    Operation(
        id="allOtas",
        method="GET",
        path=f"{API}/ota/all",
        auth="admin",
        tag=CATALOG,
        summary="Every OTA image of the site",
        data=Arr(items=models.OTA, max_items=None),
        listing="sized",
    ),
    Operation(
        id="findOtas",
        method="GET",
        path=f"{API}/ota/find",
        auth="admin",
        tag=CATALOG,
        summary="OTA images, paged",
        params=listing(catalog.OTA_SORTABLE, filter_param(catalog.OTA_FILTERS)),
        data=Arr(items=models.OTA, max_items=MAX_PAGE_SIZE),
        listing="paged",
    ),
    Operation(
        id="download",
        method="GET",
        path=f"{API}/file/{{fileUuid}}",
        auth="file",
        tag=FILES,
        summary="The bytes of an app or image (Range: one `bytes=` range, 206)",
        description="ETag is the sha256 (If-None-Match: 304; If-Range with another: whole file). "
        "A range starting past the end is 416 with `Content-Range: bytes */<length>`.",
        params=(QStr(name="fileUuid", where="path", node=Str(max_len=None)),),
        download=True,
        errors=(404, 416),
    ),
    Operation(
        id="saveProfile",
        method="POST",
        path=f"{API}/profile/save",
        auth="admin",
        tag=PROFILES,
        summary="Create a profile",
        body=bodies.PROFILE_SAVE,
        body_name="profile body",
        data=models.PROFILE_SAVED,
        links=(
            Link("findProfile", {"uuid": "$response.body#/data/uuid"}),
            Link("profileStatus", {"uuid": "$response.body#/data/uuid"}),
        ),
    ),
    Operation(
        id="allProfiles",
        method="GET",
        path=f"{API}/profile/all",
        auth="admin",
        tag=PROFILES,
        summary="Every profile of the site",
        data=Arr(items=models.PROFILE, max_items=None),
    ),
    Operation(
        id="findProfiles",
        method="GET",
        path=f"{API}/profile/find",
        auth="admin",
        tag=PROFILES,
        summary="Profiles, paged",
        params=listing(profiles.SORTABLE, filter_param(profiles.FILTERS)),
        data=Arr(items=models.PROFILE, max_items=MAX_PAGE_SIZE),
        listing="paged",
    ),
    Operation(
        id="findProfile",
        method="GET",
        path=f"{API}/profile/findBy",
        auth="admin",
        tag=PROFILES,
        summary="One profile",
        params=(UUID,),
        data=models.PROFILE,
        errors=(404,),
        links=(
            Link("editProfile", {"uuid": "$response.body#/data/uuid"}, body="$response.body#/data"),
        ),
    ),
    Operation(
        id="editProfile",
        method="POST",
        path=f"{API}/profile/edit",
        auth="admin",
        tag=PROFILES,
        summary="Replace a profile (send it as loaded, edited; a stale `updated` is 40900)",
        params=(UUID,),
        body=bodies.PROFILE_EDIT,
        body_name="profile body",
        data=models.PROFILE,
        errors=(404, 409),
        links=(Link("findProfile", {"uuid": "$response.body#/data/uuid"}),),
    ),
    Operation(
        id="profileStatus",
        method="GET",
        path=f"{API}/profile/status",
        auth="admin",
        tag=PROFILES,
        summary="Progress counts of a profile and its devices, paged",
        params=(UUID, *PAGING),
        data=models.PROFILE_STATUS,
        listing="paged",
        errors=(404,),
    ),
    Operation(
        id="register",
        method="POST",
        path=f"{API}/agent/register",
        auth="key",
        tag=AGENT,
        summary="A device token for a saved device (a new one revokes the previous)",
        body=bodies.REGISTER,
        data=models.REGISTERED,
        errors=(404,),
    ),
    Operation(
        id="checkin",
        method="POST",
        path=f"{API}/agent/checkin",
        auth="device",
        tag=AGENT,
        summary="Report state; learn the interval and the profiles in scope",
        body=bodies.CHECKIN,
        body_name="check-in body",
        data=models.CHECKIN_ANSWER,
        errors=(429,),
    ),
    Operation(
        id="putApps",
        method="PUT",
        path=f"{API}/agent/apps",
        auth="device",
        tag=AGENT,
        summary="Report the app inventory",
        body=bodies.INVENTORY,
        body_name="inventory body",
        data=models.APP_INVENTORY,
    ),
    Operation(
        id="agentProfiles",
        method="GET",
        path=f"{API}/agent/profiles",
        auth="device",
        tag=AGENT,
        summary="The profiles in scope, with this device's progress",
        data=Arr(items=models.DEVICE_PROFILE, max_items=None),
    ),
    Operation(
        id="otaNext",
        method="GET",
        path=f"{API}/agent/ota/next",
        auth="device",
        tag=AGENT,
        summary="The next image step for a profile (§6), or none and why",
        params=(required_str("profileUuid"),),
        data=models.OTA_NEXT,
        errors=(404, 422),
    ),
    Operation(
        id="postEvents",
        method="POST",
        path=f"{API}/agent/events",
        auth="device",
        tag=AGENT,
        summary="Report progress events (idempotent by `id`); data: the number accepted",
        body=bodies.EVENTS,
        body_name="events body",
        data=Int(minimum=0),
        errors=(422,),
    ),
    Operation(
        id="pushChannel",
        method="GET",
        path=f"{API}/agent/ws",
        auth="device",
        tag=AGENT,
        summary="The push channel (WebSocket): `sync` and `wake` messages",
        description='Upgrade to a WebSocket; the server sends {"type":"sync"} when a profile '
        'in scope changes and {"type":"wake"} for wakeToApply; {"type":"ping"} is answered '
        '{"type":"pong"}. A plain GET (no upgrade) is 40000.',
        websocket=True,
    ),
    Operation(
        id="openapi",
        method="GET",
        path=f"{API}/openapi.json",
        auth="public",
        tag="document",
        summary="This document (OpenAPI 3.1), generated from the operation table",
        raw=models.OPENAPI_DOCUMENT,
    ),
)


def by_route() -> dict[tuple[str, str], Operation]:
    """(method, path) -> operation; HEAD is answered as GET."""
    table = {(op.method, op.path): op for op in OPERATIONS}
    for op in OPERATIONS:
        if op.method == "GET":
            table.setdefault(("HEAD", op.path), op)
    return table
