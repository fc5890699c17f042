"""The profile planner (pure): (profiles, device conditions, progress, now) -> Plan.

Theory of operation: each profile, in the server's order, is checked against its schedule
(start, repeat occurrence, end), then against the conditions that hold all of it back
(`timeOption` window, `applyWhile.sleeping`, offline without `applyWhile.offline`). Its parts
run in `applyOrder` (that part first, then apps, otas, settings); a later part starts only
when every item of the earlier one is done or deferred. Items: one per `apps.install[]`
entry, one `ota` when `otas` is not empty, one `settings` when settings other than `otas` are
given. Per item: downloads wait for `updateVia`'s network; the image waits for AC with
`need_ac`; `silent_install: false` asks the platform for consent. A new profile version
(`updated`) or a new occurrence starts the items afresh; a failed item is not retried before
one of those. Deferral reasons: not_before, window, sleeping, offline, network, need_ac.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.core.schedule import current_occurrence, minutes_until_open
from agent.models import DONE, Kind

PARTS = ("apps", "otas", "settings")
_KIND_OF_PART = {"apps": Kind.APP, "otas": Kind.OTA, "settings": Kind.SETTINGS}


class Reason(StrEnum):
    NOT_BEFORE = "not_before"
    WINDOW = "window"
    SLEEPING = "sleeping"
    OFFLINE = "offline"
    NETWORK = "network"
    NEED_AC = "need_ac"


@dataclass(frozen=True, slots=True, kw_only=True)
class Conditions:
    ac: bool
    sleeping: bool
    online: bool
    network: str  # wifi, ethernet, mobile, none
    local_minutes: int  # minutes since local midnight


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileProgress:
    """What this device did of one profile version and occurrence (persisted by the agent)."""

    updated: int
    occurrence: int
    items: Mapping[str, str] = field(default_factory=dict)  # item key -> last ItemStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    profile: str
    kind: Kind  # app, ota, settings
    key: str  # "app:<fileUuid>", "ota", "settings"
    target: str  # fileUuid for apps, "" otherwise
    options: Mapping[str, Any] = field(default_factory=dict)
    consent: bool = False  # the platform must get the user's consent first


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferral:
    profile: str
    key: str  # an item key, or "profile" when the whole profile waits
    reason: Reason
    retry_in_s: float | None = None  # when to look again (None: on a condition change)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    actions: tuple[Action, ...] = ()
    deferrals: tuple[Deferral, ...] = ()
    completed: tuple[str, ...] = ()  # profiles whose every item is done now
    progress: Mapping[str, ProfileProgress] = field(default_factory=dict)  # reset versions


def part_order(apply_order: str | None) -> tuple[str, ...]:
    first = apply_order if apply_order in PARTS else None
    return ((first,) if first else ()) + tuple(p for p in PARTS if p != first)


def items_of(doc: Mapping[str, Any]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """part -> [(key, target, options)]"""
    apps = [
        (f"app:{e['uuid']}", e["uuid"], dict(e))
        for e in (doc.get("apps") or {}).get("install") or []
    ]
    settings = {k: v for k, v in (doc.get("settings") or {}).items() if k != "otas"}
    otas_settings = dict((doc.get("settings") or {}).get("otas") or {})
    return {
        "apps": apps,
        "otas": [("ota", "", otas_settings)] if doc.get("otas") else [],
        "settings": [("settings", "", settings)] if settings else [],
    }


def _network_ok(update_via: str, network: str) -> bool:
    return update_via in ("", "any") or update_via == network


def plan(
    profiles: Sequence[tuple[str, int, Mapping[str, Any]]],
    conditions: Conditions,
    progress: Mapping[str, ProfileProgress],
    now: int,
    downloaded: frozenset[str] = frozenset(),
) -> Plan:
    """`profiles` are (uuid, updated, doc) in the server's order; `downloaded` holds the
    targets whose content is already on the device (installable while offline)."""
    actions: list[Action] = []
    deferrals: list[Deferral] = []
    completed: list[str] = []
    fresh: dict[str, ProfileProgress] = {}
    for uuid, updated, doc in profiles:
        section = doc.get("profile") or {}
        occurrence = current_occurrence(dict(doc), now)
        if occurrence.index is None:
            if occurrence.reason == "not_before":
                wait = (occurrence.next_start or now) - now
                deferrals.append(
                    Deferral(
                        profile=uuid,
                        key="profile",
                        reason=Reason.NOT_BEFORE,
                        retry_in_s=max(1.0, wait / 1000),
                    )
                )
            continue
        mine = progress.get(uuid)
        if mine is None or mine.updated != updated or mine.occurrence != occurrence.index:
            mine = ProfileProgress(updated=updated, occurrence=occurrence.index)
            fresh[uuid] = mine
        parts = items_of(doc)
        pending = {
            part: [i for i in parts[part] if mine.items.get(i[0]) not in DONE] for part in parts
        }
        if not any(pending.values()):
            completed.append(uuid)
            continue
        wait_min = minutes_until_open(section.get("timeOption"), conditions.local_minutes)
        apply_while = section.get("applyWhile") or {}
        held: Reason | None = None
        retry: float | None = None
        if wait_min:
            held, retry = Reason.WINDOW, wait_min * 60.0
        elif conditions.sleeping and not apply_while.get("sleeping", True):
            held = Reason.SLEEPING
        elif not conditions.online and not apply_while.get("offline", False):
            held = Reason.OFFLINE
        if held is not None:
            deferrals.append(Deferral(profile=uuid, key="profile", reason=held, retry_in_s=retry))
            continue
        for part in part_order(section.get("applyOrder")):
            started = False
            for key, target, options in pending[part]:
                deferral = _item_deferral(
                    part, key, target, options, section, conditions, downloaded
                )
                if deferral is not None:
                    deferrals.append(Deferral(profile=uuid, key=key, reason=deferral))
                    continue
                silent = options.get("silent_install", True)
                actions.append(
                    Action(
                        profile=uuid,
                        kind=_KIND_OF_PART[part],
                        key=key,
                        target=target,
                        options=options,
                        consent=part in ("apps", "otas") and silent is False,
                    )
                )
                started = True
            if started:
                break  # a later part waits until this one is done or deferred
    return Plan(
        actions=tuple(actions),
        deferrals=tuple(deferrals),
        completed=tuple(completed),
        progress=fresh,
    )


def _item_deferral(
    part: str,
    key: str,
    target: str,
    options: Mapping[str, Any],
    section: Mapping[str, Any],
    conditions: Conditions,
    downloaded: frozenset[str],
) -> Reason | None:
    needs_download = part in ("apps", "otas") and (target or key) not in downloaded
    if needs_download and not conditions.online:
        return Reason.OFFLINE
    if needs_download and not _network_ok(section.get("updateVia") or "any", conditions.network):
        return Reason.NETWORK
    if part == "otas" and options.get("need_ac") and not conditions.ac:
        return Reason.NEED_AC
    return None
