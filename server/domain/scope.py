"""Which enabled profiles cover a device (§5), compiled once per site change (pure).

Devices in scope = every device of the site for a global profile; otherwise the serials in
`scope.device` plus the devices of `scope.group` and all their child groups; minus the devices
excluded by `unscopeIfApplied` after they applied the profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.domain.groups import with_descendants


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopedProfile:
    uuid: str
    updated: int
    is_global: bool
    serials: frozenset[str]
    groups: frozenset[str]
    excluded: frozenset[str]
    doc: dict[str, Any] = field(compare=False)

    def covers(self, *, serial: str, group_uuid: str | None, device_uuid: str) -> bool:
        if device_uuid in self.excluded:
            return False
        return (
            self.is_global
            or serial in self.serials
            or (group_uuid is not None and group_uuid in self.groups)
        )


@dataclass(frozen=True, slots=True)
class SiteScope:
    profiles: tuple[ScopedProfile, ...]

    def for_device(
        self, *, serial: str, group_uuid: str | None, device_uuid: str
    ) -> list[ScopedProfile]:
        return [
            p
            for p in self.profiles
            if p.covers(serial=serial, group_uuid=group_uuid, device_uuid=device_uuid)
        ]


def compile_site(
    profiles: Iterable[tuple[str, int, dict[str, Any]]],
    parents: Mapping[str, str | None],
    exclusions: Mapping[str, frozenset[str]],
) -> SiteScope:
    """`profiles` are (uuid, updated, doc) of the site's enabled profiles."""
    compiled = []
    for profile_uuid, updated, doc in profiles:
        scope = doc.get("scope") or {}
        compiled.append(
            ScopedProfile(
                uuid=profile_uuid,
                updated=updated,
                is_global=bool(doc.get("isGlobal")),
                serials=frozenset(scope.get("device") or ()),
                groups=frozenset(with_descendants(scope.get("group") or (), parents)),
                excluded=exclusions.get(profile_uuid, frozenset()),
                doc=doc,
            )
        )
    return SiteScope(tuple(compiled))


def covering_changed(
    before: SiteScope, after: SiteScope, *, serial: str, group_uuid: str | None, device_uuid: str
) -> bool:
    """Whether the device is covered by another set of profile versions (uuid, updated) in
    `after` than in `before`: then it needs a `sync`."""

    def versions(scope: SiteScope) -> set[tuple[str, int]]:
        covering = scope.for_device(serial=serial, group_uuid=group_uuid, device_uuid=device_uuid)
        return {(p.uuid, p.updated) for p in covering}

    return versions(before) != versions(after)
