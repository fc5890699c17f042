"""Builds real Agents (simulated platform, real aiohttp transport) for the tests."""

from __future__ import annotations

import random
from pathlib import Path

from agent.clock import Clock, SystemClock
from agent.config import AgentConfig
from agent.platforms.base import BuildInfo, HardwareInfo
from agent.platforms.simulated import SimulatedPlatform
from agent.protocol import Request, Response
from agent.runtime.agent import Agent
from agent.runtime.outbox import Outbox
from agent.runtime.state import StateStore
from agent.transport.client import AiohttpTransport

OPEN: list[AiohttpTransport] = []  # closed after each test by tests/agent/conftest.py


class RecordingTransport(AiohttpTransport):
    """The real transport, remembering the name of every request it sent."""

    def __init__(self, base_url: str, **kwargs: object) -> None:
        super().__init__(base_url, **kwargs)  # type: ignore[arg-type]
        self.names: list[str] = []
        OPEN.append(self)

    async def send(self, request: Request) -> Response:
        self.names.append(request.name)
        return await super().send(request)


def make_agent(
    base: str,
    state_dir: Path,
    *,
    serial: str = "S1",
    api_key: str = "key-alpha",
    admin: bool = True,
    clock: Clock | None = None,
    timeout_s: float = 5.0,
    platform: SimulatedPlatform | None = None,
) -> tuple[Agent, RecordingTransport]:
    config = AgentConfig(
        server=base,
        api_key=api_key,
        state_dir=state_dir,
        platform="simulated",
        admin_email="admin@alpha.test" if admin else "",
        admin_password="pw-alpha" if admin else "",
        request_timeout_s=timeout_s,
    )
    transport = RecordingTransport(base, timeout_s=timeout_s)
    platform = platform or SimulatedPlatform(
        HardwareInfo(serial_no=serial, manufacturer="Acme", model="Sim"),
        BuildInfo(
            fingerprint="acme/sim/sim:14/A/1:user/release-keys",
            build_date=1700000000,
            device_id="sim",
            ab_update=True,
        ),
    )
    agent = Agent(
        config=config,
        platform=platform,
        transport=transport,
        clock=clock or SystemClock(),
        state_store=StateStore(state_dir),
        outbox=Outbox(state_dir / "outbox"),
        rng=random.Random(7),
    )
    return agent, transport
