"""What devices send (§7), validated into typed values: check-ins, inventories, events (pure).

Rules [ours]: unknown keys are ignored, known keys of the wrong type are 40001 naming them;
an inventory holds at most MAX_APPS apps with a non-empty `packageName` each, no package twice;
an event batch holds 1..MAX_EVENTS events with client-made uuid `id`s, an ISO-8601 `at`, and
`kind`/`status` from the protocol's vocabularies.

Limits (server.limits): every integer (`clientVersion`, `buildDate`, `versionCode`, app sizes
and times) within INT_MIN..INT_MAX (Fields.integer), every time within MIN_TIME_MS..MAX_TIME_MS
(server.domain.profiles.time_ms). The check-in is the hot path: only the values it stores as
sent (`power.battery`, an object `network`) go through check_value, never the whole body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from server.domain.profiles import time_ms
from server.domain.validation import Fields, check_value, expect_list, expect_object, join
from server.errors import InvalidField
from server.limits import INT_MAX, INT_MIN, MAX_APPS, MAX_EVENTS, MAX_STRING

EVENT_KINDS = ("app", "ota", "settings", "profile")
EVENT_STATUSES = (
    "deferred",
    "downloading",
    "downloaded",
    "installing",
    "installed",
    "applied",
    "failed",
    "skipped",
)
CATEGORIES = ("user", "system", "all")
_BUILD_STRINGS = (
    "fingerprint",
    "displayId",
    "deviceId",
    "productId",
    "skuId",
    "customerId",
    "slot",
    "region",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinReport:
    client_version: int
    rtc_enabled: bool
    state: str
    sleeping: bool
    report: dict[str, Any]  # activity, power, network, build: stored as sent (validated)
    inventory_hash: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventInput:
    id: str
    at_ms: int
    profile_uuid: str | None
    kind: str
    target: str
    status: str
    reason: str
    doc: dict[str, Any]


def _build(fields: Fields) -> dict[str, Any]:
    build: dict[str, Any] = {key: fields.string(key, max_len=512) for key in _BUILD_STRINGS}
    build["buildDate"] = fields.integer("buildDate", minimum=0)
    sdk = fields.obj.get("sdk")
    if sdk is not None and (isinstance(sdk, bool) or not isinstance(sdk, int | str)):
        raise InvalidField(f"{fields.name('sdk')}: must be a string or an integer")
    build["sdk"] = "" if sdk is None else str(sdk)
    build["abUpdate"] = fields.boolean("abUpdate", default=False)
    return build


def parse_checkin(body: Any) -> CheckinReport:
    top = Fields(expect_object(body, "check-in body"))
    states = top.obj_field("states")
    power = top.obj_field("power")
    battery = power.obj.get("battery")
    if battery is not None and (
        isinstance(battery, bool)
        or not isinstance(battery, int | float)
        or not INT_MIN <= battery <= INT_MAX  # also NaN (never in range), Infinity
    ):
        raise InvalidField("power.battery: must be a finite number (percent) within signed 64 bits")
    activity = top.string("activity", max_len=64)
    state = states.string("state", max_len=64)
    network = top.obj.get("network")
    if network is not None and not isinstance(network, str | dict):
        raise InvalidField("network: must be a string (wifi, ethernet, ...) or an object")
    if isinstance(network, dict):
        check_value(network, "network")
    elif isinstance(network, str) and len(network) > MAX_STRING:
        raise InvalidField(f"network: longer than {MAX_STRING} characters")
    inventory_hash = top.optional_string("inventoryHash", max_len=256)
    report = {
        "activity": activity,
        "power": {"ac": power.boolean("ac", default=False), "battery": battery},
        "network": network,
        "build": _build(top.obj_field("build")),
    }
    return CheckinReport(
        client_version=states.integer("clientVersion", default=0, minimum=0) or 0,
        rtc_enabled=states.boolean("rtcEnabled", default=False),
        state=state,
        sleeping="sleeping" in (activity.lower(), state.lower()),
        report=report,
        inventory_hash=inventory_hash or None,
    )


_APP_STRINGS = (
    "label",
    "versionName",
    "minSdkVersion",
    "targetSdkVersion",
    "maxSdkVersion",
    "certMd5",
)
_APP_INTS = ("versionCode", "appSize", "dataSize", "firstInstalled", "lastUpdated")


def parse_inventory(body: Any) -> tuple[str, list[dict[str, Any]], str | None]:
    """(category, apps, inventoryHash) of a `PUT /agent/apps` body."""
    top = Fields(expect_object(body, "inventory body"))
    category = top.string("category", default="all")
    if category not in CATEGORIES:
        raise InvalidField(f"category: must be one of {', '.join(CATEGORIES)}, not {category!r}")
    apps: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(top.array("apps", required=True, max_items=MAX_APPS)):
        fields = Fields(item, join("apps", index))
        package = fields.string("packageName", required=True, allow_empty=False, max_len=256)
        if package in seen:
            raise InvalidField(f"{fields.name('packageName')}: {package!r} is listed twice")
        seen.add(package)
        app: dict[str, Any] = {"packageName": package}
        for key in _APP_STRINGS:
            app[key] = fields.string(key, max_len=1024)
        for key in _APP_INTS:
            app[key] = fields.integer(key, minimum=0)
        apps.append(app)
    return category, apps, top.optional_string("inventoryHash", max_len=256) or None


def _event(item: Any, path: str) -> EventInput:
    fields = Fields(item, path)
    event_id = fields.string("id", required=True, allow_empty=False, max_len=64)
    try:
        uuid.UUID(event_id)
    except ValueError as exc:
        raise InvalidField(f"{fields.name('id')}: {event_id!r} is not a uuid") from exc
    at = time_ms(fields.obj.get("at"), fields.name("at"))
    if at is None:
        raise InvalidField(f"{fields.name('at')}: is required")
    kind = fields.string("kind", required=True)
    if kind not in EVENT_KINDS:
        raise InvalidField(f"{fields.name('kind')}: must be one of {', '.join(EVENT_KINDS)}")
    status = fields.string("status", required=True)
    if status not in EVENT_STATUSES:
        raise InvalidField(f"{fields.name('status')}: must be one of {', '.join(EVENT_STATUSES)}")
    version_code = fields.integer("versionCode", minimum=0)
    build = fields.optional_string("build", max_len=512)
    doc: dict[str, Any] = {}
    if version_code is not None:
        doc["versionCode"] = version_code
    if build is not None:
        doc["build"] = build
    return EventInput(
        id=event_id.lower(),
        at_ms=at,
        profile_uuid=fields.optional_string("profileUuid", max_len=64) or None,
        kind=kind,
        target=fields.string("target", max_len=512),
        status=status,
        reason=fields.string("reason", max_len=1024),
        doc=doc,
    )


def parse_events(body: Any) -> list[EventInput]:
    items = expect_list(body, "events body")
    if not items:
        raise InvalidField("body: the list of events is empty")
    if len(items) > MAX_EVENTS:
        raise InvalidField(f"body: at most {MAX_EVENTS} events per request, got {len(items)}")
    return [_event(item, join("", index)) for index, item in enumerate(items)]


def progress_status(kind: str, status: str) -> str:
    """How one event moves a device's progress on a profile (`profile/status` vocabulary)."""
    if status == "failed":
        return "failed"
    if status == "deferred":
        return "deferred"
    if kind == "profile" and status in ("applied", "skipped"):
        return "applied"
    return "applying"
