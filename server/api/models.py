"""What the server answers (`data` of the envelope), as server.wire renders it: one named schema
per protocol object (§3-§7). Fields always present are required; a field that may be null says
so. Objects stay open (a later field is not a breaking change), so a client validating with these
schemas keeps working when the server adds one.
"""

from __future__ import annotations

from server.api.schema import (
    AnyJson,
    Arr,
    Bool,
    Either,
    Int,
    Named,
    Node,
    Null,
    Obj,
    Prop,
    Str,
)
from server.domain.device_reports import CATEGORIES, EVENT_KINDS, EVENT_STATUSES
from server.domain.feed import FeedReason
from server.domain.ota_info import STRING_FIELDS, TYPES
from server.domain.presence import Presence
from server.limits import MAX_CHALLENGE_CHARS
from server.store.profiles import PROGRESS_STATES


def maybe(node: Node) -> Either:
    """`node` or null, and always present."""
    return Either([node, Null()])


def always(**props: Node) -> dict[str, Prop]:
    """Properties that are always present."""
    return {key: Prop(node, required=True) for key, node in props.items()}


def text() -> Str:
    return Str(max_len=None)


def moment() -> Str:
    return Str(max_len=64, format="date-time", description="ISO-8601 UTC with milliseconds")


def an_id() -> Str:
    return Str(max_len=64)


def count() -> Int:
    return Int(minimum=0)


DEVICE_GROUP = Named(
    "DeviceGroup",
    Obj(
        props=always(
            siteUuid=an_id(),
            parentUuid=maybe(an_id()),
            deviceNumbers=count(),
            uuid=an_id(),
            profile=Obj(props=always(name=text())),
            created=maybe(moment()),
            updated=maybe(moment()),
            enabled=Bool(),
        )
    ),
)

HARDWARE_INFO = Obj(props=always(serial_no=text(), manufacturer=text(), brand=text(), model=text()))

DEVICE = Named(
    "Device",
    Obj(
        props=always(
            siteUuid=an_id(),
            states=Obj(
                props=always(
                    clientVersion=Int(),
                    rtcEnabled=Bool(),
                    state=Str(choices=tuple(Presence)),
                )
            ),
            enrolled=maybe(moment()),
            lastCheckedIn=maybe(moment()),
            lastDisconnected=maybe(moment()),
            uuid=an_id(),
            profile=Obj(props=always(hardware_info=HARDWARE_INFO)),
            created=maybe(moment()),
            updated=maybe(moment()),
            enabled=Bool(),
            deviceGroup=maybe(DEVICE_GROUP),
            keyFingerprint=maybe(
                Str(max_len=64, description="hex SHA-256 of the bound key's DER (§7), or null")
            ),
        )
    ),
)

APP_INFO = Named(
    "AppInfo",
    Obj(
        props={
            **always(packageName=text()),
            **{
                key: maybe(text())
                for key in (
                    "label",
                    "versionName",
                    "minSdkVersion",
                    "targetSdkVersion",
                    "maxSdkVersion",
                    "certMd5",
                )
            },
            **{
                key: maybe(Int())
                for key in ("versionCode", "appSize", "dataSize", "firstInstalled", "lastUpdated")
            },
        }
    ),
)

APP_INVENTORY = Named(
    "AppInventory",
    Obj(
        props=always(
            deviceUuid=an_id(),
            serialNo=text(),
            category=Str(choices=CATEGORIES),
            apps=Arr(items=APP_INFO, max_items=None),
            reported=maybe(moment()),
        )
    ),
)

APP_STATUS = Named(
    "AppStatus",
    Obj(
        props=always(
            deviceUuid=an_id(),
            serialNo=text(),
            packageName=text(),
            versionCode=maybe(Int()),
            installed=Bool(),
        )
    ),
)

FILE_INFO = Obj(
    props=always(
        length=count(),
        lastModified=maybe(moment()),
        fileName=text(),
        sha256=Str(max_len=64, pattern="^[0-9a-f]{64}$", pattern_hint="be hex"),
    )
)

_CATALOG_ENTRY = always(
    fileUuid=an_id(),
    fileInfo=FILE_INFO,
    userUuid=maybe(an_id()),
    extra=Obj(),
    name=text(),
    enable=Bool(),
    lastUpdated=maybe(moment()),
    registeredAt=maybe(moment()),
)

APP = Named("App", Obj(props={**always(appInfo=APP_INFO), **_CATALOG_ENTRY}))

OTA_INFO = Named(
    "OtaInfo",
    Obj(
        props={
            **always(type=Str(choices=TYPES), abUpdate=Bool(), buildDate=maybe(Int())),
            **{key: text() for key in STRING_FIELDS},
            "sdk": text(),
        }
    ),
)

OTA = Named("Ota", Obj(props={**always(otaInfo=OTA_INFO), **_CATALOG_ENTRY}))

PROFILE_PROPS = always(
    uuid=an_id(),
    siteUuid=an_id(),
    writerUuid=maybe(an_id()),
    writer=Obj(props=always(uuid=maybe(an_id()), email=maybe(text()))),
    created=Int(description="epoch ms"),
    updated=Int(description="epoch ms; send it back with profile/edit"),
    isGlobal=Bool(),
    enabled=Bool(),
    profile=Obj(props=always(name=text())),
    scope=Obj(
        props=always(
            group=Arr(items=text(), max_items=None), device=Arr(items=text(), max_items=None)
        )
    ),
    apps=Obj(props=always(install=Arr(items=Obj(props=always(uuid=text())), max_items=None))),
    otas=Arr(items=Either([text(), Obj(props=always(uuid=text()))]), max_items=None),
    schedule_date=Obj(props=always(start_on=maybe(moment()))),
    settings=Obj(),
)

PROFILE = Named(
    "Profile",
    Obj(
        props=PROFILE_PROPS,
        description="the profile as stored: the save body's fields with every default filled in",
    ),
)

DEVICE_PROFILE = Named(
    "DeviceProfile",
    Obj(
        props={
            **PROFILE_PROPS,
            **always(
                progress=Obj(
                    props=always(
                        status=Str(choices=PROGRESS_STATES),
                        reason=text(),
                        updated=maybe(moment()),
                    )
                ),
            ),
        },
        description="a Profile with this device's progress on it",
    ),
)

PROFILE_SAVED = Obj(props=always(uuid=an_id(), name=text(), updated=Int()))

PROFILE_STATUS = Obj(
    props=always(
        scoped=count(),
        **{state: count() for state in PROGRESS_STATES},
        devices=Arr(
            items=Obj(
                props=always(
                    deviceUuid=an_id(),
                    serialNo=text(),
                    status=Str(choices=PROGRESS_STATES),
                    reason=text(),
                    updated=maybe(moment()),
                )
            ),
            max_items=None,
        ),
    )
)

EVENT = Named(
    "Event",
    Obj(
        props={
            **always(
                id=an_id(),
                deviceUuid=an_id(),
                profileUuid=maybe(an_id()),
                at=moment(),
                received=moment(),
                kind=Str(choices=EVENT_KINDS),
                target=text(),
                status=Str(choices=EVENT_STATUSES),
                reason=text(),
            ),
            "versionCode": Int(),
            "build": text(),
        }
    ),
)

TOKEN = Obj(
    props=always(
        access_token=text(),
        token_type=Str(choices=("Bearer",)),
        expires_in=count(),
    )
)

TOKEN_VERIFY = Obj(
    props=always(
        valid=Bool(),
        email=text(),
        userUuid=an_id(),
        siteUuid=an_id(),
        expires_in=count(),
    )
)

REGISTERED = Obj(props=always(deviceUuid=an_id(), token=text()))

CHALLENGE = Obj(
    props=always(
        challenge=Str(max_len=MAX_CHALLENGE_CHARS, description="sign its UTF-8 bytes"),
        expiresIn=Int(minimum=1, description="seconds it stays good for; single use"),
    )
)

CHECKIN_ANSWER = Obj(
    props=always(
        nextCheckinSeconds=count(),
        serverTime=moment(),
        inventoryWanted=Bool(),
        profiles=Arr(items=Obj(props=always(uuid=an_id(), updated=Int())), max_items=None),
    )
)

OTA_NEXT = Obj(
    props=always(
        ota=maybe(OTA),
        reason=Str(choices=tuple(FeedReason)),
        target=maybe(text()),
    )
)

OPENAPI_DOCUMENT = Obj(
    props=always(openapi=Str(), info=Obj(), paths=Obj()),
    description="this document (OpenAPI 3.1)",
)

ANY = AnyJson()
