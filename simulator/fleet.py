"""The fleet: the plan's devices as real `Agent`s, started on time and driven through their day.

Theory of operation: every planned device becomes, at its planned arrival time, an
`agent.runtime.agent.Agent` on a `SimulatedPlatform` built from its kind (hardware, build,
apps, power, network), with memory persistence, the process's shared `ArtifactStore`, its own
transport on the shared `FleetTransports` session and a `SplitMix64(device.seed)`. Arrivals are
an open model: one scheduler walks the devices in planned order and starts each at its own
time on the fleet's clock, whether or not earlier devices have answered; how late a start was
is kept (`start_lag_ms`). One driver per kind walks that kind's power steps, sleep windows and
offline windows (scenario seconds from the run's start) and applies each to the kind's running
devices; a device that starts later takes the kind's state at its start. Offline: the kind's
`Gate` makes every transport of the kind refuse (TransportError, no exchange reported) and
closes the kind's open push channels; the platform reports network `none` meanwhile.

Clocks: the fleet shares one `ScaledClock(time_scale)`; a kind with a clock skew gets a
`SkewedClock` over it (wall time off, same monotonic time and waits). Every exchange the
transports time is on that scaled clock (scenario seconds): the observer (simulator.metrics)
divides by the time scale, so latencies are reported in real milliseconds.

Faults (the scenario's `[[faults]]`, simulator.plan.faults): a kind hit by any gets each of its
devices' transport wrapped in a `FaultyTransport` (its own rng stream, drawn from the device's
seed) and, for clock jumps, a `JumpingClock`; as an outage begins, the kinds' open push
channels are closed.

Every device's task is the fleet's (one TaskGroup); an agent that fails is caught here, in
one place, and counted (`failed`, with its error), never taking the fleet down. One task of the
fleet waits for the stop and asks each agent to stop (`Agent.request_stop`).
"""

from __future__ import annotations

import array
import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.clock import Clock, ScaledClock
from agent.config import AgentConfig
from agent.core.rng import SplitMix64
from agent.errors import TransportError
from agent.models import AppRecord, HardwareInfo
from agent.platforms.simulated import SimulatedPlatform
from agent.protocol import Request, Response
from agent.runtime.agent import Agent
from agent.runtime.artifacts import ArtifactStore
from agent.runtime.device_key import DerivedKeyStore
from agent.runtime.memory import MemoryOutbox, MemoryStateStore
from agent.transport.base import Download, PushChannel, Sink, Transport, no_observer
from simulator.faulty import FaultyTransport, JumpingClock
from simulator.plan.faults import Fault, FaultType
from simulator.plan.model import DeviceKind, Plan, PlannedDevice, PowerStep, Window

log = structlog.get_logger("simulator.fleet")

EventSink = Callable[[str, dict[str, Any]], None]  # (serial, the event as queued)
DEFAULT_CHECKIN_S = 60.0
KEPT_ERRORS = 20  # failed agents whose error the statistics quote
FAULT_SEED_SALT = 0x5EED_FA17  # a device's fault draws: its own stream, not its agent's


def faults_of(faults: tuple[Fault, ...], kind: str) -> tuple[Fault, ...]:
    """The faults that can touch `kind`'s devices."""
    return tuple(f for f in faults if f.kinds is None or kind in f.kinds)


# -- pure: a kind's state over time -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KindState:
    """What a device of a kind is at one moment."""

    ac: bool
    battery: float | None
    sleeping: bool
    offline: bool


def _inside(windows: tuple[Window, ...], t: float) -> bool:
    return any(w.start_s <= t < w.end_s for w in windows)


def state_at(kind: DeviceKind, t: float) -> KindState:
    """The kind's power (the last step at or before `t`), sleep and offline state at `t`."""
    step: PowerStep | None = None
    for candidate in kind.power:
        if candidate.at_s <= t:
            step = candidate
    ac, battery = (step.ac, step.battery) if step is not None else (True, 100.0)
    return KindState(
        ac=ac, battery=battery, sleeping=_inside(kind.sleep, t), offline=_inside(kind.offline, t)
    )


def change_times(kind: DeviceKind) -> list[float]:
    """The moments (> 0, ordered, once each) at which the kind's state may change."""
    times = {p.at_s for p in kind.power}
    for window in (*kind.sleep, *kind.offline):
        times.update((window.start_s, window.end_s))
    return sorted(t for t in times if t > 0 and math.isfinite(t))


def hardware_of(kind: DeviceKind, serial: str) -> HardwareInfo:
    return HardwareInfo(
        serial_no=serial, manufacturer=kind.manufacturer, brand=kind.brand, model=kind.model
    )


def apps_of(kind: DeviceKind) -> list[AppRecord]:
    return [
        AppRecord(
            package_name=a.package,
            version_code=a.version_code,
            version_name=a.version_name,
            label=a.label,
            cert_md5=a.cert_md5,
        )
        for a in kind.apps
    ]


# -- clocks ----------------------------------------------------------------------------------


class SkewedClock(ScaledClock):
    """The fleet's clock with the wall time off by `skew_s` (a device whose RTC is wrong):
    the same monotonic time and the same waits (inherited: they only use `rate`)."""

    def __init__(self, base: ScaledClock, skew_s: float) -> None:  # no super(): reads `base`
        self.rate = base.rate
        self._base = base
        self._skew_ms = round(skew_s * 1000)

    def now_ms(self) -> int:
        return self._base.now_ms() + self._skew_ms

    def monotonic(self) -> float:
        return self._base.monotonic()


# -- offline windows ------------------------------------------------------------------------


class Gate:
    """A kind's network: while `offline`, its transports refuse; its open push channels."""

    __slots__ = ("channels", "offline")

    def __init__(self) -> None:
        self.offline = False
        self.channels: set[PushChannel] = set()

    def check(self, what: str) -> None:
        if self.offline:
            raise TransportError(f"{what}: no network (simulated offline window)")

    async def cut(self) -> None:
        """Go offline: close every open push channel of the kind (the agents see it close)."""
        self.offline = True
        sockets = [getattr(c, "socket", None) for c in list(self.channels)]
        await asyncio.gather(*(s.close() for s in sockets if s is not None), return_exceptions=True)


class GatedTransport:
    """An agent's transport that its kind's Gate can cut off."""

    __slots__ = ("gate", "inner")

    def __init__(self, inner: Transport, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    async def send(self, request: Request) -> Response:
        self.gate.check(request.name or request.path)
        return await self.inner.send(request)

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        self.gate.check(f"download {path}")
        return await self.inner.download(path, headers, target, offset)

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        self.gate.check(f"download {path}")
        return await self.inner.download_to(path, headers, sink)

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[PushChannel]:
        self.gate.check("push channel")
        async with self.inner.open_push(path, headers) as channel:
            self.gate.channels.add(channel)
            try:
                yield channel
            finally:
                self.gate.channels.discard(channel)


# -- the devices ------------------------------------------------------------------------------


class Transports(Protocol):
    """What makes each agent's transport: agent.transport.fleet.FleetTransports (aiohttp), or
    agent.transport.lean.LeanFleetTransports (the lean pool)."""

    def transport(self, *, clock: Clock | None = None) -> Transport: ...


class ObservedOutbox(MemoryOutbox):
    """A memory outbox that also tells the metrics of every event the agent queues."""

    __slots__ = ("_serial", "_sink")

    def __init__(self, serial: str, sink: EventSink) -> None:
        super().__init__()
        self._serial, self._sink = serial, sink

    def put_event(self, event: dict[str, Any]) -> str:
        event_id = super().put_event(event)
        self._sink(self._serial, event)
        return event_id


class Device:
    """A started device: its plan, its agent and the platform the fleet drives."""

    __slots__ = ("agent", "error", "planned", "platform")

    def __init__(self, planned: PlannedDevice, agent: Agent, platform: SimulatedPlatform) -> None:
        self.planned, self.agent, self.platform = planned, agent, platform
        self.error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSettings:
    server_url: str
    api_key: str
    request_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetStatistics:
    planned: int
    started: int
    running: int
    enrolled: int
    failed: int
    websockets: int
    checkins: int
    checkin_failures: int
    start_lag_ms: dict[str, float]  # {p50, p99, max} of arrivals, real ms late
    errors: tuple[tuple[str, str], ...]  # (serial, error) of failed agents, the first few


class KindDriver:
    """Applies one kind's power, sleep and offline changes to its running devices."""

    def __init__(self, kind: DeviceKind, clock: ScaledClock) -> None:
        self.kind = kind
        self.clock = clock
        self.gate = Gate()
        self.platforms: list[SimulatedPlatform] = []
        self.current = state_at(kind, 0.0)
        self.gate.offline = self.current.offline

    def attach(self, platform: SimulatedPlatform) -> None:
        """A device of the kind starts: it takes the kind's current state."""
        self._apply(platform, self.current, initial=True)
        self.platforms.append(platform)

    def _apply(self, platform: SimulatedPlatform, state: KindState, *, initial: bool) -> None:
        platform.battery = state.battery
        if initial:
            platform.ac = state.ac
        elif platform.ac != state.ac:
            platform.set_power(ac=state.ac)  # the agent hears of it (AC back: deferred OTAs)
        platform.is_sleeping = state.sleeping
        platform.network_type = "none" if state.offline else self.kind.network

    async def run(self, stop: asyncio.Event, t0: float) -> None:
        """Apply each change at `t0 + t` on the clock until `stop` is set."""
        for t in change_times(self.kind):
            if await self.clock.wait_for(stop, t0 + t - self.clock.monotonic()):
                return
            state = state_at(self.kind, t)
            going_offline = state.offline and not self.current.offline
            self.gate.offline = state.offline
            self.current = state
            for platform in self.platforms:
                self._apply(platform, state, initial=False)
            if going_offline:
                await self.gate.cut()
            log.debug("fleet.kind_state", kind=self.kind.name, t=t, state=str(state))


class Fleet:
    """The plan's devices as real agents: `run(stop)` starts each at its planned time and
    returns once every agent has stopped (after `stop` is set, each flushes and ends)."""

    def __init__(
        self,
        plan: Plan,
        settings: FleetSettings,
        *,
        clock: ScaledClock,
        transports: Transports,
        artifacts: ArtifactStore,
        on_event: EventSink | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.clock = clock
        self.transports = transports
        self.artifacts = artifacts
        self.on_event = on_event
        self.drivers = {name: KindDriver(kind, clock) for name, kind in plan.kinds.items()}
        self._t0 = clock.monotonic()  # the run's start; run() sets it
        self._faults = {name: faults_of(plan.faults, name) for name in plan.kinds}
        self._push_channels: dict[str, set[PushChannel]] = {name: set() for name in plan.kinds}
        self._clocks = {name: self._clock_of(kind) for name, kind in plan.kinds.items()}
        self._configs = {
            name: AgentConfig(
                server=settings.server_url,
                api_key=settings.api_key,
                platform="simulated",
                push=kind.push,
                sync_spread_s=kind.sync_spread_s,
                checkin_interval_s=kind.checkin_interval_s or DEFAULT_CHECKIN_S,
                request_timeout_s=settings.request_timeout_s,
            )
            for name, kind in plan.kinds.items()
        }
        self._builds = {name: kind.build for name, kind in plan.kinds.items()}
        self._apps = {name: apps_of(kind) for name, kind in plan.kinds.items()}
        self.devices: list[Device] = []
        self._running = 0
        self._failed = 0
        self._errors: list[tuple[str, str]] = []
        self._lags = array.array("d")  # real ms each arrival was late

    def scenario_s(self) -> float:
        """Scenario seconds since the run's start."""
        return self.clock.monotonic() - self._t0

    def _clock_of(self, kind: DeviceKind) -> ScaledClock:
        jumps = [f for f in self._faults[kind.name] if f.type is FaultType.CLOCK_JUMP]
        if jumps:
            return JumpingClock(
                self.clock,
                skew_s=kind.clock_skew_s,
                kind=kind.name,
                faults=jumps,
                now_s=self.scenario_s,
            )
        return SkewedClock(self.clock, kind.clock_skew_s) if kind.clock_skew_s else self.clock

    def make_device(self, planned: PlannedDevice) -> Device:
        """The device's platform, stores, transport and Agent (not started)."""
        kind = self.plan.kinds[planned.kind]
        driver = self.drivers[planned.kind]
        platform = SimulatedPlatform(
            hardware_of(kind, planned.serial),
            self._builds[planned.kind],
            apps=list(self._apps[planned.kind]),
            network=kind.network,
        )
        clock = self._clocks[planned.kind]
        transport: Transport = self.transports.transport(clock=clock)
        faults = [f for f in self._faults[planned.kind] if f.type is not FaultType.CLOCK_JUMP]
        if faults:
            transport = FaultyTransport(
                transport,
                kind=planned.kind,
                faults=faults,
                now_s=self.scenario_s,
                clock=clock,
                rng=SplitMix64(planned.seed ^ FAULT_SEED_SALT),
                observer=getattr(self.transports, "observer", no_observer),
                channels=self._push_channels[planned.kind],
            )
        if kind.offline:
            transport = GatedTransport(transport, driver.gate)
        outbox = (
            ObservedOutbox(planned.serial, self.on_event)
            if self.on_event is not None
            else MemoryOutbox()
        )
        agent = Agent(
            config=self._configs[planned.kind],
            platform=platform,
            transport=transport,
            clock=clock,
            state_store=MemoryStateStore(),
            outbox=outbox,
            rng=SplitMix64(planned.seed),
            artifacts=self.artifacts,
            keys=DerivedKeyStore(planned.seed),  # twins of one serial: keys of their own
        )
        driver.attach(platform)
        return Device(planned, agent, platform)

    async def run(self, stop: asyncio.Event, *, t0: float | None = None) -> None:
        """Run the fleet from `t0` on the clock (default: now; the plan's times count from
        there) until `stop` is set and every agent has stopped."""
        start = self.clock.monotonic() if t0 is None else t0
        self._t0 = start
        async with asyncio.TaskGroup() as group:
            for driver in self.drivers.values():
                group.create_task(driver.run(stop, start), name=f"kind-{driver.kind.name}")
            if any(f.type is FaultType.OUTAGE for f in self.plan.faults):
                group.create_task(self._outages(stop), name="outages")
            group.create_task(self._stop_agents(stop), name="stopper")
            await self._arrivals(group, stop, start)

    async def _stop_agents(self, stop: asyncio.Event) -> None:
        """One wait for the whole fleet: once `stop` is set, every started agent is asked to
        stop (Agent.request_stop: it flushes, commits and ends); no agent waits on `stop`
        itself (a waiter each is memory at 50,000 devices). No device starts after `stop`."""
        await stop.wait()
        for device in self.devices:
            device.agent.request_stop()

    async def _outages(self, stop: asyncio.Event) -> None:
        """As each outage begins, close the open push channels of the kinds it hits (the
        agents see them drop, as they would when the target goes away)."""
        outages = sorted(
            (f for f in self.plan.faults if f.type is FaultType.OUTAGE), key=lambda f: f.start_s
        )
        for outage in outages:
            delay = outage.start_s - self.scenario_s()
            if delay > 0 and await self.clock.wait_for(stop, delay):
                return
            kinds = self.plan.kinds if outage.kinds is None else outage.kinds
            channels = [c for k in kinds for c in self._push_channels.get(k, ())]
            sockets = [getattr(c, "socket", None) for c in channels]
            await asyncio.gather(
                *(s.close() for s in sockets if s is not None), return_exceptions=True
            )
            log.info("fleet.outage", at_s=outage.start_s, closed=len(channels))

    async def _arrivals(self, group: asyncio.TaskGroup, stop: asyncio.Event, t0: float) -> None:
        """Start each device at its planned time (open model: no device waits for another)."""
        clock, rate = self.clock, self.clock.rate
        for planned in self.plan.devices:
            delay = t0 + planned.arrive_s - clock.monotonic()
            if delay > 0 and await clock.wait_for(stop, delay):
                return
            if stop.is_set():
                return
            late = clock.monotonic() - t0 - planned.arrive_s
            self._lags.append(max(0.0, late) / rate * 1000)
            try:
                device = self.make_device(planned)
            except Exception as exc:  # noqa: BLE001 - one device's failure is a statistic
                self._fail(planned.serial, exc)
                continue
            self.devices.append(device)
            group.create_task(self._run_device(device), name=planned.serial)

    async def _run_device(self, device: Device) -> None:
        self._running += 1
        try:
            await device.agent.run()  # until _stop_agents asks it to stop
        except Exception as exc:  # noqa: BLE001 - the one place an agent's failure is caught
            device.error = f"{type(exc).__name__}: {exc}"
            self._fail(device.planned.serial, exc)
        finally:
            self._running -= 1

    def _fail(self, serial: str, exc: Exception) -> None:
        self._failed += 1
        if len(self._errors) < KEPT_ERRORS:
            self._errors.append((serial, f"{type(exc).__name__}: {exc}"))
        log.warning("fleet.agent_failed", serial=serial, error=str(exc))

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices)

    @property
    def up(self) -> int:
        """Agents running now."""
        return self._running

    def websockets(self) -> int:
        return sum(1 for d in self.devices if d.agent.push_connected)

    def statistics(self) -> FleetStatistics:
        enrolled = websockets = checkins = failures = 0
        for device in self.devices:
            agent = device.agent
            enrolled += agent.state.enrolled
            websockets += agent.push_connected
            stats = agent.statistics()
            checkins += stats.checkins
            failures += stats.failures
        lags = sorted(self._lags)
        return FleetStatistics(
            planned=len(self.plan.devices),
            started=len(self.devices),
            running=self._running,
            enrolled=enrolled,
            failed=self._failed,
            websockets=websockets,
            checkins=checkins,
            checkin_failures=failures,
            start_lag_ms={
                "p50": round(_quantile(lags, 0.5), 3),
                "p99": round(_quantile(lags, 0.99), 3),
                "max": round(lags[-1], 3) if lags else 0.0,
            },
            errors=tuple(self._errors),
        )


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
