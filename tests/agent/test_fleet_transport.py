"""The fleet transports (aiohttp's shared session, and the lean pool whose push channels go
through one): hundreds of agents' push channels against the real server, with their check-ins
still answered; and an agent's transport stays a few pointers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from typing import Any

import aiohttp
import pytest

from agent import protocol
from agent.protocol import Credentials
from agent.transport.base import Transport
from agent.transport.fleet import FleetTransports, fleet_session
from agent.transport.lean import LeanFleetTransports
from tests.agent.agent_harness import SAFETY_S
from tests.helpers import Client, Server

AGENTS = 300  # three times aiohttp's default connection limit
CHECKIN = {
    "states": {"clientVersion": 3, "rtcEnabled": True, "state": "online"},
    "activity": "active",
    "power": {"ac": True, "battery": 80},
    "network": "wifi",
    "build": {"fingerprint": "acme/sim/sim:14/A/1:user/release-keys", "buildDate": 1700000000},
}


async def enroll(
    fleet: FleetTransports | LeanFleetTransports, serials: list[str]
) -> list[Credentials]:
    """Register every (saved) device through its own fleet transport; their credentials."""
    creds = Credentials(api_key="key-alpha")

    async def register(serial: str) -> Credentials:
        request = protocol.register(creds, serial, {"serial_no": serial, "model": "Sim"})
        answer = await fleet.transport().send(request)
        registration = protocol.parse_registration(protocol.decode(answer, "register"))
        return Credentials(api_key=creds.api_key, device_token=registration.token)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(register(serial)) for serial in serials]
    return [task.result() for task in tasks]


@pytest.mark.parametrize("fleet_class", [FleetTransports, LeanFleetTransports])
async def test_300_push_channels_on_one_session_and_check_ins_answered(
    server: Server, admin: Client, fleet_class: type[FleetTransports | LeanFleetTransports]
) -> None:
    """300 agents on one fleet session: all 300 push channels connect, a profile saved for all
    of them reaches each channel as `sync`, and each agent's check-in is answered (listing that
    profile) while the 300 sockets stay open. On a default ClientSession (limit=100) the 101st
    channel never connects and this test fails at its first wait."""
    serials = [f"F{i:04d}" for i in range(AGENTS)]
    saved = await admin.post(
        "/ota/api/device/save",
        [{"profile": {"hardware_info": {"serial_no": s}}, "enabled": True} for s in serials],
    )
    assert saved.status == 200, saved.body
    connected = 0
    all_connected, release = asyncio.Event(), asyncio.Event()
    synced: list[dict[str, Any]] = []
    all_synced = asyncio.Event()

    async def agent_push(transport: Transport, creds: Credentials) -> None:
        nonlocal connected
        async with transport.open_push(protocol.PUSH, protocol.device_headers(creds)) as channel:
            connected += 1
            if connected == AGENTS:
                all_connected.set()
            messages = channel.messages()
            synced.append(await anext(messages))
            if len(synced) == AGENTS:
                all_synced.set()
            await release.wait()

    async with fleet_class(server.base, timeout_s=SAFETY_S) as fleet:
        agents = await enroll(fleet, serials)
        transports = [fleet.transport() for _ in agents]
        async with asyncio.TaskGroup() as group:
            for transport, creds in zip(transports, agents, strict=True):
                group.create_task(agent_push(transport, creds))
            try:
                async with asyncio.timeout(SAFETY_S):
                    await all_connected.wait()
            except TimeoutError:
                raise AssertionError(f"{connected} of {AGENTS} push channels connected") from None
            profile = await admin.post("/ota/api/profile/save", {"scope": {"device": serials}})
            assert profile.status == 200, profile.body
            async with asyncio.timeout(SAFETY_S):
                await all_synced.wait()
            assert synced == [{"type": "sync"}] * AGENTS

            async def checkin(transport: Transport, creds: Credentials) -> Any:
                answer = await transport.send(protocol.checkin(creds, CHECKIN))
                return protocol.parse_checkin_reply(protocol.decode(answer, "checkin"))

            replies = await asyncio.gather(
                *(checkin(t, c) for t, c in zip(transports, agents, strict=True))
            )
            assert connected == AGENTS  # still open
            assert all(
                [ref.uuid for ref in reply.profiles] == [profile.data["uuid"]] for reply in replies
            )
            release.set()


async def test_push_heartbeats_are_not_rounded_onto_one_tick(server: Server, admin: Client) -> None:
    """aiohttp rounds a timer over 5 s up to a whole second of loop time unless told not to: every
    channel's 30 s heartbeat then fired on one tick (15,000 channels: ~500 pings in one burst a
    second, on the fleet's side and on the server's). Each side's timers are exact: the
    channels' next pings are not all on whole seconds, and the server's connections round
    nothing."""
    serials = [f"H{i:02d}" for i in range(12)]
    saved = await admin.post(
        "/ota/api/device/save",
        [{"profile": {"hardware_info": {"serial_no": s}}, "enabled": True} for s in serials],
    )
    assert saved.status == 200, saved.body
    async with FleetTransports(server.base, timeout_s=SAFETY_S) as fleet:
        agents = await enroll(fleet, serials)
        async with contextlib.AsyncExitStack() as stack:
            channels = [
                await stack.enter_async_context(
                    fleet.transport().open_push(protocol.PUSH, protocol.device_headers(creds))
                )
                for creds in agents
            ]
            whens = [channel.socket._heartbeat_when for channel in channels]
            assert all(when > 0 for when in whens)
            assert any(when != math.ceil(when) for when in whens), whens
            assert server.runner is not None and server.runner.server is not None
            handlers = server.runner.server.connections
            assert handlers and all(h._timeout_ceil_threshold == math.inf for h in handlers)


async def test_fleet_session_has_no_connection_limit() -> None:
    """The fleet's connector has no overall or per-host limit (aiohttp's default is 100)."""
    async with fleet_session() as session:
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == 0 and session.connector.limit_per_host == 0


async def test_an_agents_transport_is_a_few_pointers() -> None:
    """Transports made by the fleet share its session and endpoint and have no __dict__, so
    10,000 agents' transports cost well under a megabyte."""
    async with FleetTransports("http://127.0.0.1:1/") as fleet:
        one, two = fleet.transport(), fleet.transport()
        assert one.session() is two.session() is fleet.session()
        assert one.endpoint is two.endpoint and one.base_url == "http://127.0.0.1:1"
        assert not hasattr(one, "__dict__") and sys.getsizeof(one) <= 80
        await one.close()  # not its session to close
        assert not fleet.session().closed
