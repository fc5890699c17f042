"""`/ota/api/logs/find` (§3): the event log of a device or a profile, paged (newest last).

`filter.forWhat` names a device uuid or a profile uuid; without it every event of the site is
listed. Further filter keys: kind, status, deviceUuid, profileUuid; sortBy: at, received.
"""

from __future__ import annotations

from aiohttp import web

from server.context import services_of
from server.domain.paging import parse_page_request
from server.errors import InvalidField
from server.handlers.request import admin, site
from server.store import reports
from server.wire import paged, render_event


@admin
async def find(request: web.Request) -> web.Response:
    page = parse_page_request(
        request.query, sortable=frozenset(reports.LOG_SORTABLE), filterable=reports.LOG_FILTERABLE
    )
    for_what_values = page.filters.get("forWhat")
    for_what: str | None = None
    if for_what_values is not None:
        if len(for_what_values) != 1 or not isinstance(for_what_values[0], str):
            raise InvalidField("filter.forWhat: must be one device or profile uuid")
        for_what = for_what_values[0]
    rows, total = await reports.find_events(
        services_of(request).db, site(request).uuid, for_what, page
    )
    return paged([render_event(r) for r in rows], total=total, size=page.size)
