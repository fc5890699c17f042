"""Long-lived services report what they hold as frozen `statistics()` snapshots (STYLE §9)."""

from __future__ import annotations

import aiohttp

from server.context import SERVICES, Services
from server.services.checkins import CheckinStatistics
from server.services.wakes import WakeStatistics
from tests.conftest import StartServer
from tests.helpers import Client
from tests.server.test_agent_api import CHECKIN, enroll


async def start(
    server_factory: StartServer, http: aiohttp.ClientSession, **overrides: object
) -> tuple[Services, Client]:
    server = await server_factory(**overrides)
    assert server.app is not None
    site = server.sites["alpha"]
    admin = Client(http, server.base, site.key)
    await admin.login(site.email, site.password)
    return server.app[SERVICES], admin


async def test_checkin_batches_are_counted(
    server_factory: StartServer, http: aiohttp.ClientSession
) -> None:
    """A changed check-in waits for its batch; a heartbeat waits in `pending` for the next."""
    services, admin = await start(server_factory, http, checkin_flush_s=3600.0)
    device = await enroll(admin, "D1")
    assert (await device.post("/ota/api/agent/checkin", CHECKIN)).status == 200
    first = services.checkins.statistics()
    assert first == CheckinStatistics(cached_devices=1, pending=0, batches=first.batches)
    assert first.batches >= 1
    assert (await device.post("/ota/api/agent/checkin", CHECKIN)).status == 200
    assert services.checkins.statistics().pending == 1
    await services.checkins.flush()
    assert services.checkins.statistics() == CheckinStatistics(
        cached_devices=1, pending=0, batches=first.batches + 1
    )


async def test_wakes_ahead_are_counted(
    server_factory: StartServer, http: aiohttp.ClientSession
) -> None:
    """A wakeToApply profile starting later waits in the scheduler; nothing is sent before."""
    services, admin = await start(server_factory, http)
    profile = {"wakeToApply": True, "startsOn": "2026-09-21T15:00:00.000Z"}
    assert (await admin.post("/ota/api/profile/save", {"profile": profile})).status == 200
    assert services.wakes.statistics() == WakeStatistics(scheduled=1, sent=0)
