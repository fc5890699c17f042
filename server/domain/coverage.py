"""Profile coverage in the device API (pure): which profiles a device's events may name, and what
a device applying a profile does to that profile's scope.

Events: an event naming a profile is accepted when the profile covers the device now, or covered
it once (the device has progress on it, or was excluded by unscopeIfApplied), or when its id is
stored already (a retried batch, accepted again without effect). Otherwise the whole batch is
refused (42200) and nothing of it is stored.

unscopeIfApplied [seed; details ours]: when a device applies a non-global profile that has
`unscopeIfApplied`, the device is excluded from it (also when a group covered it) and its serial
leaves `scope.device`; with `removeIfNoScope`, a profile whose scope is then empty (no serial,
no group) is deleted. The store bumps the `updated` of a profile it changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.domain.device_reports import EventInput


def named_elsewhere(events: Iterable[EventInput], covering: Collection[str]) -> frozenset[str]:
    """The profiles the events name that do not cover the device now: the store looks up
    whether they covered it once."""
    return frozenset(
        e.profile_uuid
        for e in events
        if e.profile_uuid is not None and e.profile_uuid not in covering
    )


def first_uncovered(
    events: Iterable[EventInput],
    *,
    covering: Collection[str],
    covered_before: Collection[str],
    known_ids: Collection[str],
) -> EventInput | None:
    """The first event that names a profile it may not name, or None when the batch is fine."""
    for event in events:
        if (
            event.profile_uuid is not None
            and event.profile_uuid not in covering
            and event.profile_uuid not in covered_before
            and event.id not in known_ids
        ):
            return event
    return None


class UnscopeAction(StrEnum):
    KEEP = "keep"  # the profile does not unscope (no unscopeIfApplied, or global)
    EXCLUDE = "exclude"  # exclude the device; store `doc`
    DELETE = "delete"  # exclude the device; the profile's scope is empty: delete it


@dataclass(frozen=True, slots=True, kw_only=True)
class Unscope:
    action: UnscopeAction
    doc: Mapping[str, Any] = field(default_factory=dict)  # the new document, for EXCLUDE


def unscope(doc: Mapping[str, Any], serial: str) -> Unscope:
    """What applying the profile stored as `doc` does to it, for the device `serial`."""
    section = doc.get("profile") or {}
    if not section.get("unscopeIfApplied") or doc.get("isGlobal"):
        return Unscope(action=UnscopeAction.KEEP)
    stored = doc.get("scope")
    scope = dict(stored) if isinstance(stored, Mapping) else {"group": [], "device": []}
    if serial in scope.get("device", []):
        scope["device"] = [s for s in scope["device"] if s != serial]
    if section.get("removeIfNoScope") and not scope.get("device") and not scope.get("group"):
        return Unscope(action=UnscopeAction.DELETE)
    return Unscope(action=UnscopeAction.EXCLUDE, doc={**doc, "scope": scope})
