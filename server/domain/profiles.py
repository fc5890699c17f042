"""Profile bodies (§5) validated and normalised into the stored document (pure).

Every known field is type-checked and filled with its default so that a loaded profile shows the
whole contract; keys the protocol does not name are kept under `settings` only (device settings
applied as given). Server-managed keys of a loaded profile (uuid, siteUuid, writer, created,
updated) are not part of the document. Times (`startsOn`, `schedule_date.start_on`, `ends` with
`endsOption: on`) are accepted as ISO-8601 strings or epoch ms and stored as ISO-8601 UTC.

Decisions [ours]: no `profile.name` -> the save time as `yyyyMMdd_HH:mm:ss` (UTC);
`applyWhile.sleeping` defaults to true, `applyWhile.offline` to false; `settings.otas` defaults
to silent_install true, partialFirst false, need_ac false, checkBuildDate true (never feed an older
build unless asked to); `otas` entries may be a fileUuid or `{"uuid": fileUuid}` and are stored as
given in that shape.

Limits (server.limits): the stored document passes check_value (nesting at most MAX_JSON_DEPTH,
64-bit integers, finite numbers, valid Unicode, MAX_FREE_STRING, MAX_JSON_VALUES), so every
stored document can be read back and rendered; times lie within MIN_TIME_MS..MAX_TIME_MS
(1970-01-01 to 9999-12-31, what ISO-8601 with a four-digit year writes), also `updated` of an
edit; `scope.device` serials follow server.domain.devices.parse_serial (MAX_SERIAL); each list
holds at most MAX_REFERENCES entries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.domain.devices import parse_serial
from server.domain.times import iso, parse_iso
from server.domain.validation import Fields, check_value, expect_object, join
from server.errors import InvalidField
from server.limits import MAX_REFERENCES, MAX_TIME_MS, MIN_TIME_MS

APPLY_ORDERS = ("none", "apps", "otas", "settings")
UPDATE_VIA = ("any", "wifi", "ethernet")
REPEAT_OPTIONS = ("none", "daily", "weekly", "monthly")
ENDS_OPTIONS = ("never", "on", "after")
REPEAT_PERIODS = ("day", "week", "month")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_TIME_RANGE = f"between {iso(MIN_TIME_MS)} and {iso(MAX_TIME_MS)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileInput:
    """A validated profile: the document to store and what it refers to."""

    name: str
    enabled: bool
    is_global: bool
    doc: dict[str, Any]
    app_uuids: tuple[str, ...]
    ota_uuids: tuple[str, ...]
    group_uuids: tuple[str, ...]
    device_serials: tuple[str, ...]


def default_name(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y%m%d_%H:%M:%S")


def normalize_time(value: Any, path: str) -> str | None:
    """An ISO-8601 time or epoch ms within MIN_TIME_MS..MAX_TIME_MS -> ISO-8601 UTC; None when
    absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidField(f"{path}: must be an ISO-8601 time or epoch milliseconds")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        try:
            ms = parse_iso(value)
        except (ValueError, OverflowError) as exc:
            raise InvalidField(f"{path}: {value[:64]!r} is not an ISO-8601 time") from exc
    else:
        raise InvalidField(f"{path}: must be an ISO-8601 time or epoch milliseconds")
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise InvalidField(f"{path}: must be {_TIME_RANGE} (epoch ms {MIN_TIME_MS}..{MAX_TIME_MS})")
    return iso(ms)


def time_ms(value: Any, path: str) -> int | None:
    """Like normalize_time, as epoch milliseconds."""
    text = normalize_time(value, path)
    return None if text is None else parse_iso(text)


def _choice(fields: Fields, key: str, choices: tuple[str, ...]) -> str:
    value = fields.string(key, default=choices[0])
    if value not in choices:
        raise InvalidField(
            f"{fields.name(key)}: must be one of {', '.join(choices)}, not {value!r}"
        )
    return value


def _time_option(fields: Fields) -> str:
    value = fields.string("timeOption", default="anytime")
    if value != "anytime" and not _WINDOW.match(value):
        raise InvalidField(
            f"{fields.name('timeOption')}: must be 'anytime' or 'HH:mm-HH:mm', not {value!r}"
        )
    return value


def _profile_section(fields: Fields, now_ms: int) -> dict[str, Any]:
    name = fields.string("name", max_len=256).strip() or default_name(now_ms)
    ends_option = _choice(fields, "endsOption", ENDS_OPTIONS)
    ends: Any = None
    if ends_option == "on":
        ends = normalize_time(fields.obj.get("ends"), fields.name("ends"))
        if ends is None:
            raise InvalidField(f"{fields.name('ends')}: is required when endsOption is 'on'")
    elif ends_option == "after":
        ends = fields.integer("ends", required=True, minimum=1)
    repeat_period = fields.optional_string("repeatPeriod")
    if repeat_period is not None and repeat_period not in REPEAT_PERIODS:
        raise InvalidField(
            f"{fields.name('repeatPeriod')}: must be one of {', '.join(REPEAT_PERIODS)}, "
            f"not {repeat_period!r}"
        )
    apply_while = fields.obj_field("applyWhile")
    return {
        "name": name,
        "applyOrder": _choice(fields, "applyOrder", APPLY_ORDERS),
        "removeIfNoScope": fields.boolean("removeIfNoScope", default=False),
        "unscopeIfApplied": fields.boolean("unscopeIfApplied", default=False),
        "applyWhile": {
            "sleeping": apply_while.boolean("sleeping", default=True),
            "offline": apply_while.boolean("offline", default=False),
        },
        "startsOn": normalize_time(fields.obj.get("startsOn"), fields.name("startsOn")),
        "updateVia": _choice(fields, "updateVia", UPDATE_VIA),
        "repeatOption": _choice(fields, "repeatOption", REPEAT_OPTIONS),
        "endsOption": ends_option,
        "ends": ends,
        "repeatEvery": fields.integer("repeatEvery", default=1, minimum=1, maximum=1000),
        "repeatPeriod": repeat_period,
        "timeOption": _time_option(fields),
        "wakeToApply": fields.boolean("wakeToApply", default=False),
    }


def _app_installs(fields: Fields) -> list[dict[str, Any]]:
    installs = []
    for index, item in enumerate(fields.array("install", max_items=MAX_REFERENCES)):
        entry = Fields(item, join(fields.name("install"), index))
        installs.append(
            {
                "uuid": entry.string("uuid", required=True, allow_empty=False, max_len=64),
                "starts_on_update": entry.boolean("starts_on_update", default=False),
                "silent_install": entry.boolean("silent_install", default=True),
                "grant_all": entry.boolean("grant_all", default=False),
                "reboots_on_update": entry.boolean("reboots_on_update", default=False),
            }
        )
    return installs


def _otas(fields: Fields) -> tuple[list[Any], list[str]]:
    stored: list[Any] = []
    uuids: list[str] = []
    for index, item in enumerate(fields.array("otas", max_items=MAX_REFERENCES)):
        path = join("otas", index)
        if isinstance(item, str) and item.strip():
            stored.append(item)
            uuids.append(item)
        elif isinstance(item, dict):
            uuid = Fields(item, path).string("uuid", required=True, allow_empty=False, max_len=64)
            stored.append({**item, "uuid": uuid})
            uuids.append(uuid)
        else:
            raise InvalidField(f'{path}: must be an image fileUuid or {{"uuid": fileUuid}}')
    return stored, uuids


def _settings(fields: Fields) -> dict[str, Any]:
    otas = fields.obj_field("otas")
    settings = dict(fields.obj)
    settings["otas"] = {
        **otas.obj,
        "silent_install": otas.boolean("silent_install", default=True),
        "partialFirst": otas.boolean("partialFirst", default=False),
        "need_ac": otas.boolean("need_ac", default=False),
        "checkBuildDate": otas.boolean("checkBuildDate", default=True),
    }
    return settings


def _unique(values: list[str], path: str) -> tuple[str, ...]:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise InvalidField(f"{join(path, index)}: {value!r} is listed twice")
        seen.add(value)
    return tuple(values)


def parse_profile(body: Any, now_ms: int) -> ProfileInput:
    """Validate a profile save/edit body; raise InvalidField naming the first bad field."""
    top = Fields(expect_object(body, "profile body"))
    section = _profile_section(top.obj_field("profile"), now_ms)
    scope = top.obj_field("scope")
    groups = _unique(scope.string_list("group", max_items=MAX_REFERENCES), "scope.group")
    serials = _unique(
        [
            parse_serial(item, join("scope.device", index))
            for index, item in enumerate(scope.array("device", max_items=MAX_REFERENCES))
        ],
        "scope.device",
    )
    installs = _app_installs(top.obj_field("apps"))
    app_uuids = _unique([i["uuid"] for i in installs], "apps.install")
    otas, ota_uuids = _otas(top)
    schedule = top.obj_field("schedule_date")
    is_global = top.boolean("isGlobal", default=False)
    enabled = top.boolean("enabled", default=True)
    doc = {
        "isGlobal": is_global,
        "enabled": enabled,
        "profile": section,
        "scope": {"group": list(groups), "device": list(serials)},
        "apps": {**top.obj_field("apps").obj, "install": installs},
        "otas": otas,
        "schedule_date": {
            "start_on": normalize_time(schedule.obj.get("start_on"), "schedule_date.start_on"),
        },
        "settings": _settings(top.obj_field("settings")),
    }
    check_value(doc)  # what is stored can be read back: the parts kept as given are checked here
    return ProfileInput(
        name=section["name"],
        enabled=enabled,
        is_global=is_global,
        doc=doc,
        app_uuids=app_uuids,
        ota_uuids=_unique(ota_uuids, "otas"),
        group_uuids=groups,
        device_serials=serials,
    )


def parse_updated(value: Any) -> int:
    """The `updated` of a loaded profile (epoch ms, or ISO-8601) -> epoch ms; required for edit."""
    if value is None:
        raise InvalidField(
            "updated: is required; load the profile (findBy) and send it back edited"
        )
    if isinstance(value, bool):
        raise InvalidField("updated: must be epoch milliseconds as loaded")
    if isinstance(value, int):
        if not MIN_TIME_MS <= value <= MAX_TIME_MS:
            raise InvalidField(f"updated: must be epoch milliseconds {_TIME_RANGE}")
        return value
    if isinstance(value, str):
        parsed = time_ms(value, "updated")
        if parsed is not None:
            return parsed
    raise InvalidField("updated: must be epoch milliseconds as loaded")


def next_updated(now: int, current: int) -> int:
    """The `updated` of a change: now, but always after the version it replaces (devices and
    admins compare `updated` values to notice a change)."""
    return max(now, current + 1)


def offered_otas(doc: Mapping[str, Any]) -> list[str]:
    """The fileUuids of a stored profile's `otas` (each a fileUuid or `{"uuid": fileUuid}`)."""
    return [o if isinstance(o, str) else o["uuid"] for o in doc.get("otas") or []]


def wakes_to_apply(doc: Mapping[str, Any]) -> bool:
    """An enabled profile with `wakeToApply`: its sleeping devices are woken at its start."""
    return bool(doc.get("enabled", True)) and bool((doc.get("profile") or {}).get("wakeToApply"))


def start_of(doc: Mapping[str, Any]) -> int | None:
    """When a stored profile starts: the later of `profile.startsOn` and
    `schedule_date.start_on` (epoch ms), or None when neither is set."""
    times = [
        time_ms((doc.get("profile") or {}).get("startsOn"), "startsOn"),
        time_ms((doc.get("schedule_date") or {}).get("start_on"), "start_on"),
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else None
