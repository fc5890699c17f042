"""Who gets a `sync` when the admin changes something (§7), using the hub's indexes.

- A profile saved or edited: the connected devices it covered before or covers now.
- A group moved under another parent: the connected devices of its subtree whose set of
  covering profiles changed.
"""

from __future__ import annotations

from server.domain.scope import ScopedProfile, SiteScope
from server.hub import Hub

SYNC = {"type": "sync"}


def covered_connected(hub: Hub, site_uuid: str, profile: ScopedProfile) -> set[str]:
    if profile.is_global:
        found = hub.in_site(site_uuid)
    else:
        found = hub.by_serials(site_uuid, profile.serials) | hub.by_groups(
            site_uuid, profile.groups
        )
    return found - profile.excluded


async def profile_changed(
    hub: Hub, site_uuid: str, before: ScopedProfile | None, after: ScopedProfile | None
) -> int:
    targets: set[str] = set()
    for version in (before, after):
        if version is not None:
            targets |= covered_connected(hub, site_uuid, version)
    return await hub.send(targets, SYNC)


async def groups_changed(
    hub: Hub, site_uuid: str, before: SiteScope, after: SiteScope, groups: set[str]
) -> int:
    targets = []
    for device_uuid in hub.by_groups(site_uuid, groups):
        ref = hub.ref(device_uuid)
        if ref is None:
            continue
        old = {
            (p.uuid, p.updated)
            for p in before.for_device(
                serial=ref.serial, group_uuid=ref.group_uuid, device_uuid=ref.uuid
            )
        }
        new = {
            (p.uuid, p.updated)
            for p in after.for_device(
                serial=ref.serial, group_uuid=ref.group_uuid, device_uuid=ref.uuid
            )
        }
        if old != new:
            targets.append(device_uuid)
    return await hub.send(targets, SYNC)
