"""§7 push channel: rtcEnabled, lastDisconnected, `sync` to the devices concerned, `wake`.

Nothing here waits on the wall clock: a test waits for a message, a pong, or the server's own
record of a closed channel; each wait has a generous safety timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from server.clock import FixedClock
from server.context import SERVICES
from tests.helpers import Client, Server
from tests.server.test_agent_api import CHECKIN, enroll
from tests.server.test_groups import make_group

SAFETY_S = 60.0  # a hung test fails after this long; no test expects to come near it


@asynccontextmanager
async def push_channel(device: Client) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with device.http.ws_connect(
        f"{device.base}/ota/api/agent/ws", headers=device.headers()
    ) as ws:
        await ping(ws)  # the server has registered the socket once it answers
        yield ws


async def ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "ping"})
    assert await next_message(ws) == {"type": "pong"}


async def next_message(ws: aiohttp.ClientWebSocketResponse) -> Any:
    async with asyncio.timeout(SAFETY_S):
        message = await ws.receive()
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return message.json()


async def test_rtc_enabled_and_last_disconnected(
    server: Server, admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rtcEnabled is true while the socket is open; closing it sets lastDisconnected (written
    with the next check-in batch, which the test runs itself rather than wait for its timer)."""
    assert server.runner is not None
    context = server.runner.app[SERVICES]
    closed = asyncio.Event()
    record = context.checkins.channel

    def channel(device_uuid: str, connected: bool) -> None:
        record(device_uuid, connected)
        if not connected:
            closed.set()

    monkeypatch.setattr(context.checkins, "channel", channel)
    device = await enroll(admin, "D1")
    async with push_channel(device):
        found = (await admin.get("/ota/api/device/findBy", serialNo="D1")).data
        assert found["states"]["rtcEnabled"] is True and found["lastDisconnected"] is None
    async with asyncio.timeout(SAFETY_S):
        await closed.wait()  # the server noticed the close
        await context.checkins.flush()  # the batch that carries it (unless one already took it)
        await context.db.write(lambda conn: None)  # one writer thread: earlier batches committed
    found = (await admin.get("/ota/api/device/findBy", serialNo="D1")).data
    assert found["states"]["rtcEnabled"] is False
    assert found["lastDisconnected"] == "2026-09-21T14:13:20.000Z"


async def test_sync_goes_only_to_covered_devices(admin: Client) -> None:
    """A profile save syncs the devices it covers, and no other (pong proves nothing is queued)."""
    one = await enroll(admin, "D1")
    two = await enroll(admin, "D2")
    async with push_channel(one) as ws1, push_channel(two) as ws2:
        saved = await admin.post("/ota/api/profile/save", {"scope": {"device": ["D1"]}})
        assert await next_message(ws1) == {"type": "sync"}
        await ping(ws2)  # D2 got nothing before its pong
        loaded = (await admin.get("/ota/api/profile/findBy", uuid=saved.data["uuid"])).data
        loaded["scope"] = {"device": ["D2"]}
        await admin.post("/ota/api/profile/edit", loaded, uuid=saved.data["uuid"])
        assert await next_message(ws1) == {"type": "sync"}  # it lost the profile
        assert await next_message(ws2) == {"type": "sync"}  # it gained it
        await ping(ws1)
        await ping(ws2)


async def test_group_move_syncs_devices_below(admin: Client) -> None:
    """Moving a group under a group a profile covers syncs the devices of the moved group."""
    covered = await make_group(admin, "covered")
    moving = await make_group(admin, "moving")
    await admin.post("/ota/api/profile/save", {"scope": {"group": [covered]}})
    device = await enroll(admin, "D1", group=moving)
    assert (await device.post("/ota/api/agent/checkin", CHECKIN)).data["profiles"] == []
    async with push_channel(device) as ws:
        await admin.post(
            "/ota/api/device/group/save",
            {"uuid": moving, "profile": {"name": "moving"}, "parentUuid": covered},
        )
        assert await next_message(ws) == {"type": "sync"}
    assert len((await device.post("/ota/api/agent/checkin", CHECKIN)).data["profiles"]) == 1


async def test_wake_to_apply_wakes_sleeping_devices(admin: Client, clock: FixedClock) -> None:
    """At the start time, sleeping covered devices get `wake` and show as waking_up."""
    sleeper = await enroll(admin, "D1")
    awake = await enroll(admin, "D2")
    await sleeper.post("/ota/api/agent/checkin", {**CHECKIN, "activity": "sleeping"})
    await awake.post("/ota/api/agent/checkin", CHECKIN)
    clock.advance(10)
    async with push_channel(sleeper) as ws1, push_channel(awake) as ws2:
        await admin.post(
            "/ota/api/profile/save",
            {
                "scope": {"device": ["D1", "D2"]},
                "profile": {"wakeToApply": True, "startsOn": "2026-09-21T14:13:20.000Z"},
            },
        )
        messages = [await next_message(ws1), await next_message(ws1)]
        assert sorted(m["type"] for m in messages) == ["sync", "wake"]
        assert await next_message(ws2) == {"type": "sync"}
        await ping(ws2)  # the awake device was not woken
        found = (await admin.get("/ota/api/device/findBy", serialNo="D1")).data
        assert found["states"]["state"] == "waking_up"


async def test_revocation_closes_the_channel(admin: Client) -> None:
    """An admin re-save closes the device's socket (its token is revoked)."""
    device = await enroll(admin, "D1")
    async with push_channel(device) as ws:
        await admin.post(
            "/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "D1"}}}]
        )
        async with asyncio.timeout(SAFETY_S):
            message = await ws.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4401


async def test_push_channel_needs_a_device_token(admin: Client) -> None:
    """Without a valid device token the upgrade is refused with the 40100 envelope."""
    reply = await admin.get("/ota/api/agent/ws")
    assert reply.code == 40100
