"""Who gets a `sync` when an admin changes something (§7), found through the hub's indexes.

- A profile saved or edited: the connected devices it covered before or covers now.
- A group moved under another parent: the connected devices of its subtree whose set of
  covering profile versions changed (domain.scope.covering_changed).
Only connected devices are looked up, never every device of the site.
"""

from __future__ import annotations

from server.domain.scope import ScopedProfile, SiteScope, covering_changed
from server.services.hub import Hub

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
    """Sync the devices `before` or `after` covers; the number reached."""
    targets: set[str] = set()
    for version in (before, after):
        if version is not None:
            targets |= covered_connected(hub, site_uuid, version)
    return await hub.send(targets, SYNC)


async def groups_changed(
    hub: Hub, site_uuid: str, before: SiteScope, after: SiteScope, groups: set[str]
) -> int:
    """Sync the devices of `groups` whose covering profiles differ between the two scopes."""
    targets = []
    for device_uuid in hub.by_groups(site_uuid, groups):
        ref = hub.ref(device_uuid)
        if ref is not None and covering_changed(
            before, after, serial=ref.serial, group_uuid=ref.group_uuid, device_uuid=ref.uuid
        ):
            targets.append(device_uuid)
    return await hub.send(targets, SYNC)
