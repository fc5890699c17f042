"""Per-site cache of which enabled profiles cover which devices (compiled by domain.scope).

Invalidated whenever a profile, a group or an exclusion of the site changes; a load that raced
with an invalidation is not kept.
"""

from __future__ import annotations

from server.domain.scope import SiteScope, compile_site
from server.store import agent as agent_store
from server.store.db import Database


class ScopeCache:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._sites: dict[str, SiteScope] = {}
        self._generation: dict[str, int] = {}

    async def get(self, site_uuid: str) -> SiteScope:
        cached = self._sites.get(site_uuid)
        if cached is not None:
            return cached
        generation = self._generation.get(site_uuid, 0)
        profiles, parents, exclusions = await agent_store.scope_inputs(self.db, site_uuid)
        scope = compile_site(profiles, parents, exclusions)
        if self._generation.get(site_uuid, 0) == generation:
            self._sites[site_uuid] = scope
        return scope

    def invalidate(self, site_uuid: str) -> None:
        self._generation[site_uuid] = self._generation.get(site_uuid, 0) + 1
        self._sites.pop(site_uuid, None)
