"""Builds real Agents (simulated platform, real aiohttp transport) for the tests, and lets a test
wait for what the agent does without watching the wall clock.

Every recording seam (the transport, the platform, a FakeClock) notifies one `Changes`: a
request answered or failed, a push channel opened, a message or its close, a platform change, a
sleep begun or ended. `await changes.until(predicate, what)` re-checks its predicate at each
notification, never on a timer; its timeout is a safety net for a hung test, not a timing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.clock import Clock, FakeClock, SystemClock
from agent.config import AgentConfig
from agent.models import ApkArtifact, BuildInfo, HardwareInfo, OtaArtifact
from agent.platforms.simulated import SimulatedPlatform
from agent.protocol import Request, Response
from agent.runtime.agent import Agent
from agent.runtime.artifacts import ArtifactStore
from agent.runtime.outbox import FileOutbox
from agent.runtime.state import FileStateStore
from agent.transport.base import Download, Sink
from agent.transport.client import AiohttpPush, AiohttpTransport

OPEN: list[AiohttpTransport] = []  # closed after each test by tests/agent/conftest.py
SAFETY_S = 60.0  # a hung test fails after this long; no test expects to come near it


class Changes:
    """Wakes the `until()` waiters whenever something they may be waiting for happened."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Return once `predicate()` holds; it is checked now and after every notification."""
        try:
            async with asyncio.timeout(SAFETY_S):
                while not predicate():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"still waiting after {SAFETY_S:g} s: {what}") from None


class RecordingPush(AiohttpPush):
    """The real push channel, notifying each message and the channel's end."""

    def __init__(self, channel: AiohttpPush, changes: Changes) -> None:
        super().__init__(channel.socket)
        self.changes = changes

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for message in super().messages():
                self.changes.notify()
                yield message
        finally:
            self.changes.notify()


class RecordingTransport(AiohttpTransport):
    """The real transport, remembering the name of every request it sent and notifying each
    answer (or failure), each download and each push channel opened or closed."""

    def __init__(self, base_url: str, *, changes: Changes | None = None, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.names: list[str] = []
        self.changes = changes or Changes()
        OPEN.append(self)

    async def send(self, request: Request) -> Response:
        self.names.append(request.name)
        try:
            return await super().send(request)
        finally:
            self.changes.notify()

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        try:
            return await super().download(path, headers, target, offset)
        finally:
            self.changes.notify()

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        try:
            return await super().download_to(path, headers, sink)
        finally:
            self.changes.notify()

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[AiohttpPush]:
        try:
            async with super().open_push(path, headers) as channel:
                self.changes.notify()
                yield RecordingPush(channel, self.changes)
        finally:
            self.changes.notify()


class RecordingPlatform(SimulatedPlatform):
    """The simulated platform, notifying every change the agent makes to the device."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observers: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for observer in list(self.observers):
            observer()

    async def install_app(self, apk: ApkArtifact, *, grant_all: bool = False) -> None:
        await super().install_app(apk, grant_all=grant_all)
        self._changed()

    async def uninstall_app(self, package: str) -> None:
        await super().uninstall_app(package)
        self._changed()

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        await super().apply_settings(settings)
        self._changed()

    async def apply_ota(self, image: OtaArtifact, *, ab_update: bool) -> None:
        await super().apply_ota(image, ab_update=ab_update)
        self._changed()

    async def wake(self) -> None:
        await super().wake()
        self._changed()

    async def rollback(self) -> None:
        await super().rollback()
        self._changed()

    async def reboot(self) -> None:
        await super().reboot()
        self._changed()

    def set_power(self, *, ac: bool) -> None:
        super().set_power(ac=ac)
        self._changed()


def sim_platform(serial: str = "S1", **changes: Any) -> RecordingPlatform:
    return RecordingPlatform(
        HardwareInfo(serial_no=serial, manufacturer="Acme", model="Sim"),
        BuildInfo(
            fingerprint="acme/sim/sim:14/A/1:user/release-keys",
            build_date=1700000000,
            device_id="sim",
            ab_update=True,
        ),
        **changes,
    )


def make_agent(
    base: str,
    state_dir: Path,
    *,
    serial: str = "S1",
    api_key: str = "key-alpha",
    admin: bool = True,
    clock: Clock | None = None,
    timeout_s: float = 30.0,
    platform: SimulatedPlatform | None = None,
    changes: Changes | None = None,
    sync_spread_s: float = 0.0,
    ota_certs: str = "",
    artifacts: ArtifactStore | None = None,
) -> tuple[Agent, RecordingTransport]:
    """An agent for `base`; its transport, platform (if recording) and FakeClock (if one)
    all notify `transport.changes`."""
    config = AgentConfig(
        server=base,
        api_key=api_key,
        state_dir=state_dir,
        platform="simulated",
        admin_email="admin@alpha.test" if admin else "",
        admin_password="pw-alpha" if admin else "",
        request_timeout_s=timeout_s,
        sync_spread_s=sync_spread_s,
        ota_certs=ota_certs,
    )
    transport = RecordingTransport(base, timeout_s=timeout_s, changes=changes)
    platform = platform or sim_platform(serial)
    if isinstance(platform, RecordingPlatform):
        platform.observers.append(transport.changes.notify)
    if isinstance(clock, FakeClock):
        clock.observers.append(transport.changes.notify)
    agent = Agent(
        config=config,
        platform=platform,
        transport=transport,
        clock=clock or SystemClock(),
        state_store=FileStateStore(state_dir),
        outbox=FileOutbox(state_dir / "outbox"),
        rng=random.Random(7),
        artifacts=artifacts,
    )
    return agent, transport


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[None]:
    """`agent.run()` in the background while the body runs; stopped and awaited after it. If
    the agent fails meanwhile, the body is cancelled and the failure raised."""
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(agent.run(stop), name="agent-under-test")
        try:
            yield
        finally:
            stop.set()
