"""Request bodies of the JSON endpoints, as the handlers read them (field names, types, bounds).

Each shape follows its parser field by field (server.handlers.auth, groups, agent;
server.domain.devices, device_reports, profiles) in the order the parser reads, so the first
error reported is the one the parser would report. Vocabularies and batch limits come from the
domain modules and server.limits, not copied. What a parser decides beyond the structure (a
uuid that must exist, a serial listed twice, a time that must parse) stays in the parser.
"""

from __future__ import annotations

from server.api.schema import (
    AnyJson,
    Arr,
    Bool,
    Either,
    Int,
    Named,
    Num,
    Obj,
    Prop,
    Str,
    strings,
)
from server.domain.device_reports import CATEGORIES, EVENT_KINDS, EVENT_STATUSES
from server.domain.profiles import (
    APPLY_ORDERS,
    ENDS_OPTIONS,
    REPEAT_OPTIONS,
    REPEAT_PERIODS,
    UPDATE_VIA,
)
from server.limits import (
    MAX_APPS,
    MAX_CHALLENGE_CHARS,
    MAX_DEVICE_BATCH,
    MAX_EVENTS,
    MAX_FREE_STRING,
    MAX_PUBLIC_KEY_CHARS,
    MAX_REFERENCES,
    MAX_SERIAL,
    MAX_SIGNATURE_CHARS,
    MAX_TIME_MS,
    MIN_TIME_MS,
)

UUID_LEN = 64  # an object id named by a client (uuid4s are 36 characters)
NAME_LEN = 256  # names of groups, profiles, uploads; hardware strings

TIME = Either(
    [Int(minimum=MIN_TIME_MS, maximum=MAX_TIME_MS), Str(max_len=64)],
    what="an ISO-8601 time or epoch milliseconds",
    description="ISO-8601 (`2026-01-31T12:00:00.000Z`; no offset means UTC) or epoch ms",
)

# --- /portal/V1/auth --------------------------------------------------------------------------
LOGIN = Obj(
    props={
        "type": Str(choices=("email",)),
        "email": Prop(Str(max_len=320, non_blank=True), required=True),
        "password": Prop(Str(max_len=1024, non_blank=True), required=True),
    }
)

# --- groups and devices (§3) ------------------------------------------------------------------
GROUP_SAVE = Obj(
    props={
        "uuid": Str(max_len=UUID_LEN, description="an existing group's uuid: update it"),
        "profile": Prop(
            Obj(props={"name": Prop(Str(max_len=NAME_LEN, non_blank=True), required=True)}),
            required=True,
        ),
        "enabled": Bool(),
        "parentUuid": Str(max_len=UUID_LEN),
    }
)

HARDWARE_INFO = Obj(
    props={
        "serial_no": Prop(Str(max_len=MAX_SERIAL, non_blank=True), required=True),
        **strings("manufacturer", "brand", "model", max_len=NAME_LEN),
    }
)

DEVICE_SAVE = Arr(
    items=Named(
        "DeviceSave",
        Obj(
            props={
                "profile": Prop(
                    Obj(props={"hardware_info": Prop(HARDWARE_INFO, required=True)}),
                    required=True,
                ),
                "enabled": Bool(),
                "groupUuid": Str(max_len=UUID_LEN),
            }
        ),
    ),
    min_items=1,
    max_items=MAX_DEVICE_BATCH,
)

# --- profiles (§5) ----------------------------------------------------------------------------
_WINDOW = "([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]"
_UUID_REF = Str(max_len=UUID_LEN, non_blank=True)

PROFILE_SECTION = Obj(
    props={
        "name": Str(max_len=NAME_LEN, description="default: the save time, yyyyMMdd_HH:mm:ss"),
        "endsOption": Str(choices=ENDS_OPTIONS),
        "ends": AnyJson(description="endsOption on: a time; after: a count (at least 1)"),
        "repeatPeriod": Str(choices=REPEAT_PERIODS),
        "applyOrder": Str(choices=APPLY_ORDERS),
        "removeIfNoScope": Bool(),
        "unscopeIfApplied": Bool(),
        "applyWhile": Obj(props={"sleeping": Bool(), "offline": Bool()}),
        "startsOn": TIME,
        "updateVia": Str(choices=UPDATE_VIA),
        "repeatOption": Str(choices=REPEAT_OPTIONS),
        "repeatEvery": Int(minimum=1, maximum=1000),
        "timeOption": Str(
            max_len=64,
            pattern=f"^(anytime|{_WINDOW})$",
            pattern_hint="be 'anytime' or 'HH:mm-HH:mm'",
        ),
        "wakeToApply": Bool(),
    }
)

APP_INSTALL = Obj(
    props={
        "uuid": Prop(_UUID_REF, required=True),
        "starts_on_update": Bool(),
        "silent_install": Bool(),
        "grant_all": Bool(),
        "reboots_on_update": Bool(),
    }
)


def _profile(*, edit: bool) -> Obj:
    extra: dict[str, Prop | Str] = {}
    if edit:
        extra = {
            "uuid": Str(max_len=UUID_LEN, description="must be the profile named in the query"),
            "updated": Prop(
                Either(
                    [Int(), Str(max_len=64)],
                    what="epoch milliseconds as loaded",
                    description="`updated` of the profile as loaded (stale: 40900)",
                ),
                required=True,
                hint="load the profile (findBy) and send it back edited",
            ),
        }
    return Obj(
        props={
            **extra,
            "profile": PROFILE_SECTION,
            "scope": Obj(
                props={
                    "group": Arr(items=_UUID_REF, max_items=MAX_REFERENCES),
                    "device": Arr(
                        items=Str(max_len=MAX_SERIAL, non_blank=True),
                        max_items=MAX_REFERENCES,
                        description="serials; one not yet registered is saved at once",
                    ),
                },
            ),
            "apps": Obj(props={"install": Arr(items=APP_INSTALL, max_items=MAX_REFERENCES)}),
            "otas": Arr(
                items=Either(
                    [_UUID_REF, Obj(props={"uuid": Prop(_UUID_REF, required=True)})],
                    what='an image fileUuid or {"uuid": fileUuid}',
                ),
                max_items=MAX_REFERENCES,
            ),
            "schedule_date": Obj(props={"start_on": TIME}),
            "isGlobal": Bool(),
            "enabled": Bool(),
            "settings": Obj(
                props={
                    "otas": Obj(
                        props={
                            "silent_install": Bool(),
                            "partialFirst": Bool(),
                            "need_ac": Bool(),
                            "checkBuildDate": Bool(),
                        }
                    )
                },
                description="other keys are device settings, applied as given",
            ),
        }
    )


PROFILE_SAVE = _profile(edit=False)
PROFILE_EDIT = _profile(edit=True)

# --- device API (§7) --------------------------------------------------------------------------
REGISTER = Obj(
    props={
        "serialNo": Prop(Str(max_len=MAX_SERIAL, non_blank=True), required=True),
        "hardware_info": Obj(props=strings("manufacturer", "brand", "model", max_len=NAME_LEN)),
        # §7, server.domain.device_keys: what the key and the proof must be beyond their shape
        "publicKey": Str(
            max_len=MAX_PUBLIC_KEY_CHARS,
            description="SubjectPublicKeyInfo PEM, Ed25519 or EC P-256; bound at the first "
            "register (and the first after an admin re-save)",
        ),
        "challenge": Str(max_len=MAX_CHALLENGE_CHARS, description="from agent/challenge"),
        "signature": Str(
            max_len=MAX_SIGNATURE_CHARS,
            description="base64 of the device key's signature over the challenge's UTF-8 bytes",
        ),
    }
)

CHALLENGE = Obj(props={"serialNo": Prop(Str(max_len=MAX_SERIAL, non_blank=True), required=True)})

_BUILD_STRINGS = ("fingerprint", "displayId", "deviceId", "productId", "skuId", "customerId")

CHECKIN = Obj(
    props={
        "states": Obj(
            props={
                "state": Str(max_len=64),
                "clientVersion": Int(minimum=0),
                "rtcEnabled": Bool(),
            }
        ),
        "power": Obj(props={"battery": Num(description="percent"), "ac": Bool()}),
        "activity": Str(max_len=64, description="`sleeping` asks for the standby interval"),
        "network": Either(
            [Str(max_len=MAX_FREE_STRING), Obj()],
            what="a string (wifi, ethernet, ...) or an object",
        ),
        "inventoryHash": Str(max_len=256),
        "build": Obj(
            props={
                **strings(*_BUILD_STRINGS, "slot", "region", max_len=512),
                "buildDate": Int(minimum=0, description="seconds since the epoch"),
                "sdk": Either([Str(), Int()], what="a string or an integer"),
                "abUpdate": Bool(),
            }
        ),
    }
)

APP_INFO_IN = Obj(
    props={
        "packageName": Prop(Str(max_len=256, non_blank=True), required=True),
        **strings(
            "label",
            "versionName",
            "minSdkVersion",
            "targetSdkVersion",
            "maxSdkVersion",
            "certMd5",
        ),
        **{
            key: Int(minimum=0)
            for key in ("versionCode", "appSize", "dataSize", "firstInstalled", "lastUpdated")
        },
    }
)

INVENTORY = Obj(
    props={
        "category": Str(choices=CATEGORIES),
        "apps": Prop(Arr(items=APP_INFO_IN, max_items=MAX_APPS), required=True),
        "inventoryHash": Str(max_len=256),
    }
)

EVENTS = Arr(
    items=Named(
        "EventIn",
        Obj(
            props={
                "id": Prop(
                    Str(max_len=64, non_blank=True, format="uuid"),
                    required=True,
                    hint="a uuid the device made (a retried batch is stored once)",
                ),
                "at": Prop(TIME, required=True),
                "kind": Prop(Str(choices=EVENT_KINDS), required=True),
                "status": Prop(Str(choices=EVENT_STATUSES), required=True),
                "versionCode": Int(minimum=0),
                "build": Str(max_len=512),
                "profileUuid": Str(max_len=UUID_LEN),
                "target": Str(max_len=512),
                "reason": Str(max_len=1024),
            }
        ),
    ),
    min_items=1,
    max_items=MAX_EVENTS,
)
