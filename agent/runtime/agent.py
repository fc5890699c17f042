"""The agent: enrollment, the check-in loop, the push listener and the outbox flush.

Theory of operation: `run()` runs the check-in loop in its own task and owns one task for the
push listener; a stop (`request_stop()`, or a stop event) cancels both, then the outbox is flushed
once more (bounded by the request timeout) and the state committed in full. What is queued and
saved is committed (made durable) before anything is sent and before every irreversible change
to the device (runtime/state.py and runtime/outbox.py give the rules). The check-in loop checks
in, queues the inventory when the server asks or its hash changed, flushes the outbox, and
sleeps the server's interval with jitter (one clock wait, no task); when it cannot reach the
server it retries once quickly, then no more often than its check-in interval on average
(agent.core.backoff: the herd after an outage), honouring Retry-After. A `wake` on the push
channel cuts the sleep short; a `sync` does too, after a random 0..`sync_spread_s` seconds (0,
at once, unless configured).
The push listener reconnects at once, then by the same rule over twice the interval, cut short
by a check-in that succeeds while the channel is down: after an outage the channel is back with
the first check-in. Device calls that meet 40100 (a revoked token) register again once and
retry; they never save the device again. The inventory scan runs beside the check-ins: a long
cold scan does not delay them. Event ids, like every random choice, come from the injected rng:
a seeded run replays. The same class runs on a rig and, thousands of times, in the simulator.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sys
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from agent import protocol
from agent.clock import Clock, Flag
from agent.config import AgentConfig
from agent.core.backoff import next_delay, push_delay, with_jitter
from agent.core.checkin import inventory_hash
from agent.core.enrollment import AdminLogin, drive, enrollment
from agent.core.rng import RandomSource
from agent.errors import (
    AdminLoginRefused,
    AgentError,
    ApiError,
    NotFound,
    PlatformError,
    ProtocolError,
    PushClosed,
    PushRefused,
    TransportError,
    Unauthorized,
)
from agent.models import AppRecord, ProfileEvent
from agent.platforms.base import Platform
from agent.protocol import CheckinReply, Credentials, Request, Response
from agent.runtime.artifacts import DOWNLOADS, ArtifactStore, DeviceArtifacts, FileArtifacts
from agent.runtime.device_key import KeyStore, key_store_for
from agent.runtime.image_trust import image_trust
from agent.runtime.outbox import ItemKind, Outbox
from agent.runtime.profiles import ProfileRunner
from agent.runtime.state import AgentState, StateStore
from agent.transport.base import Transport

log = structlog.get_logger("agent")


class _HotLogger:
    """`log` for the lines every check-in passes: once structlog caches its loggers
    (cache_logger_on_first_use, as the CLIs configure it), the cached bound logger itself, so
    that a disabled level costs a no-op call, not the lazy proxy's __getattr__ and bind (0.8 us
    a call at 10,000s of check-ins a second); until then, the proxy's answer each time."""

    __slots__ = ("_bound",)

    def __init__(self) -> None:
        self._bound: Any = None

    def __call__(self) -> Any:
        bound = self._bound
        if bound is None:
            bound = log.bind()
            if log.bind() is bound:  # structlog caches it: so may we
                self._bound = bound
        return bound

    def info_enabled(self) -> bool:
        """Whether an info line goes anywhere (so that a line's values need not be made when
        it does not); True for a logger that cannot say."""
        enabled = getattr(self(), "is_enabled_for", None)
        return True if enabled is None else bool(enabled(logging.INFO))


hot_log = _HotLogger()
EVENT_BATCH = 100
RECHECK_S = 15.0
GOING_AWAY = 1001  # the push channel's close code (RFC 6455) of a server shutting down
MAX_STEPS = 8  # image steps (a partial chain) applied in one cycle at most


class _Running:
    """run()'s own state: the task it loops in, whether a stop was asked, what ended the push
    listener."""

    __slots__ = ("failure", "stopping", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.stopping = False
        self.failure: BaseException | None = None


async def _cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until each has ended (their errors are the caller's to read)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class AgentStatistics:
    checkins: int
    failures: int
    registrations: int
    events_sent: int
    push_connected: bool
    queued: int
    last_error: str


def iso_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Agent:
    def __init__(
        self,
        *,
        config: AgentConfig,
        platform: Platform,
        transport: Transport,
        clock: Clock,
        state_store: StateStore,
        outbox: Outbox,
        rng: RandomSource | None = None,
        artifacts: ArtifactStore | None = None,
        keys: KeyStore | None = None,
    ) -> None:
        """`artifacts`: the content store a fleet shares (downloads are streamed and hashed,
        each content kept and parsed once); without one, downloads are files in the state
        dir (a rig). `keys`: where the device key lives (default: beside the state, see
        agent.runtime.device_key)."""
        self.config = config
        self.platform = platform
        self.transport = transport
        self.clock = clock
        self.state_store = state_store
        self.keys = keys if keys is not None else key_store_for(state_store)
        self.outbox = outbox
        self.rng: RandomSource = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.state_store.prepare()
        self.outbox.prepare()
        self.state: AgentState = state_store.load()
        self.push_connected = False
        self._nudge = Flag()
        self._nudge_at: float | None = None  # a spread sync: when it is due
        self._server_back = Flag()  # a check-in succeeded while the push channel was down
        self._due: float | None = None  # when the schedule meant the next check-in to go
        self._enrolling: asyncio.Lock | None = None  # one registration at a time
        self._creds: Credentials | None = None
        self._running = _Running()  # one attribute: an Agent past 30 loses its shared-key dict
        self._hashed_apps: tuple[AppRecord, ...] | None = None  # the inventory last hashed
        self._hash = ""  # and its hash
        self._enrolled = Flag()
        if self.state.enrolled:
            self._enrolled.set()
        self._checkins = self._failures = self._events_sent = 0
        self._scan: asyncio.Future[list[AppRecord]] | None = None
        self._apps: list[AppRecord] | None = None
        self.scan_wait_s: float | None = 5.0  # None: wait for the scan (run --once)
        self.scan_error: PlatformError | None = None  # the last scan failed: its error
        self.profiles = ProfileRunner(
            platform=platform,
            clock=clock,
            call=self.send_as_device,
            emit=self._queue_profile_event,
            state=self.state,
            save=self._save_state,
            commit=self.commit,
            artifacts=self._artifacts(artifacts),
            trust=image_trust(config, platform),
        )
        if hasattr(platform, "on_change"):  # platforms that announce changes (AC, sleep)
            platform.on_change = self._nudge.set

    # -- enrollment ---------------------------------------------------------------------------

    def creds(self) -> Credentials:
        """The device's credentials: one object while the token stays (made again when it
        changes: a registration, a revoked token)."""
        token = self.state.token or None
        creds = self._creds
        if creds is None or creds.device_token != token:
            creds = self._creds = Credentials(api_key=self.config.api_key, device_token=token)
        return creds

    async def ensure_enrolled(self) -> None:
        """Register (and, with admin credentials, save a missing device) unless enrolled; the
        check-in loop and the push loop may both ask at once: one registration serves both."""
        if self.state.enrolled:
            return
        if self._enrolling is None:
            self._enrolling = asyncio.Lock()  # made on first need: most agents never wait here
        async with self._enrolling:
            if not self.state.enrolled:  # another task may have registered meanwhile
                await self._enroll()

    def _forget_token(self, rejected: str | None) -> None:
        """The server refused `rejected` (40100, or 401 at the push handshake): forget it,
        unless a registration already replaced it (never register twice for one rejection)."""
        if rejected and self.state.token == rejected:
            self.state.token = ""
            self._enrolled.clear()
            self.state_store.save(self.state)

    async def _enroll(self) -> None:
        hardware = await self.platform.hardware()
        admin = (
            AdminLogin(email=self.config.admin_email, password=self.config.admin_password)
            if self.config.admin_email
            else None
        )
        held = await self.keys.load_or_create(hardware.serial_no)  # §7 device key
        flow = enrollment(
            self.creds(),
            hardware.serial_no,
            protocol.hardware_to_wire(hardware),
            admin,
            key=held.key,
            fresh_key=held.fresh,
        )
        sent: list[str] = []

        async def send(request: Request) -> Response:
            sent.append(request.name)
            return await self.transport.send(request)

        try:
            registration = await drive(flow, send)
        except Unauthorized as exc:
            if sent[-1:] != ["login"]:
                raise
            raise AdminLoginRefused(str(exc), code=exc.code, status=exc.status, uq=exc.uq) from exc
        except NotFound as exc:
            raise NotFound(
                f"device {hardware.serial_no!r} is not saved on the server and the agent has no "
                "admin credentials to save it (--admin-email/--admin-password or "
                "MIDM_ADMIN_EMAIL/MIDM_ADMIN_PASSWORD); or ask an admin to save it",
                code=exc.code,
                status=exc.status,
                uq=exc.uq,
            ) from exc
        self.state.serial = hardware.serial_no
        self.state.device_uuid = registration.device_uuid
        self.state.token = registration.token
        self.state.registered_at = self.clock.now_ms()
        self.state.registrations += 1
        self.state_store.save(self.state)
        await self.commit()  # the token is durable before it is used
        self._enrolled.set()
        log.info(
            "enroll.ok",
            device=registration.device_uuid,
            serial=hardware.serial_no,
            saved_by_agent=admin is not None,
            key_proof=str(registration.key_proof),
        )
        if registration.key_proof is protocol.KeyProof.UNSUPPORTED:
            log.warning("enroll.no_device_keys", serial=hardware.serial_no, reason="challenge 404")

    async def send_as_device(self, request_for: Callable[[Credentials], Request], name: str) -> Any:
        """Send the request `request_for(credentials)` with the device's credentials and return
        the answer's data; a rejected token (40100) registers again once and resends. What
        was queued and saved is committed first: the server never hears of what the device
        could forget."""
        if not self.state.enrolled:
            await self.ensure_enrolled()
        await self.commit()
        creds = self.creds()
        try:
            return protocol.decode(await self.transport.send(request_for(creds)), name)
        except Unauthorized:
            log.warning("agent.token_rejected", device=self.state.device_uuid, call=name)
            self._forget_token(creds.device_token)
            await self.ensure_enrolled()
            return protocol.decode(await self.transport.send(request_for(self.creds())), name)

    # -- one cycle ----------------------------------------------------------------------------

    async def checkin(self) -> CheckinReply:
        if not self.state.enrolled:
            await self.ensure_enrolled()
        platform = self.platform
        build, power = await platform.build(), await platform.power()
        network, sleeping = await platform.network(), await platform.sleeping()
        apps = await self._inventory()
        current = self._inventory_hash(apps)
        body = protocol.checkin_body(
            build=build,
            power=power,
            network=network,
            sleeping=sleeping,
            rtc_enabled=self.push_connected,
            inventory_hash=current,
        )
        started = self.clock.monotonic() if hot_log.info_enabled() else None
        due, self._due = self._due, None  # the observer measures from the intended time
        reply = protocol.parse_checkin_reply(
            await self.send_as_device(
                lambda creds: protocol.checkin(creds, body, intended=due), "checkin"
            )
        )
        self._checkins += 1
        if not self.push_connected:
            self._server_back.set()  # the server answers: the push channel need not wait
        if (
            apps is not None
            and current is not None
            and (reply.inventory_wanted or current != self.state.reported_inventory_hash)
        ):
            self.outbox.put_inventory(protocol.inventory_report(apps, current))
        self.state.last_checkin = self.clock.now_ms()
        self.state.last_checkin_error = ""
        self.state.next_checkin_s = reply.next_checkin_s
        self.state.profiles = [{"uuid": p.uuid, "updated": p.updated} for p in reply.profiles]
        self.state_store.save(self.state)
        if started is not None:
            hot_log().info(
                "checkin.ok",
                device=self.state.serial,
                profiles=len(reply.profiles),
                ms=round((self.clock.monotonic() - started) * 1000, 1),
            )
        return reply

    def _inventory_hash(self, apps: list[AppRecord] | None) -> str | None:
        """The inventory's hash, computed again only when a record changed (the records are
        frozen: an unchanged inventory is the same records, compared by identity first)."""
        if apps is None:
            return None
        listed = tuple(apps)
        if listed != self._hashed_apps:  # interned: a fleet's agents of a kind share one string
            self._hashed_apps, self._hash = listed, sys.intern(inventory_hash(apps))
        return self._hash

    async def _inventory(self) -> list[AppRecord] | None:
        """The installed apps, from a scan that never holds a check-in up for long.

        A scan still running after `scan_wait_s` keeps running (owned by the agent, awaited by
        the next check-in, cancelled at stop); meanwhile check-ins carry the last completed
        inventory, or none before the first scan completes. A scan that fails (its source is
        unreadable) is logged and kept in `scan_error`: check-ins go on with the last good
        inventory and nothing new is reported; `run_once` then fails with that error.
        """
        if self.platform.inventory_in_memory:  # nothing to wait for: no task, no wait
            self._apps = await self.platform.installed_apps()
            return self._apps
        if self._scan is None:
            self._scan = asyncio.ensure_future(self.platform.installed_apps())
        done, _ = await asyncio.wait({self._scan}, timeout=self.scan_wait_s)
        if self._scan in done:
            scan, self._scan = self._scan, None
            try:
                self._apps = scan.result()
                self.scan_error = None
            except PlatformError as exc:  # e.g. --apk-dir unmounted: the last inventory stands
                self.scan_error = exc
                log.warning("inventory.scan_failed", device=self.state.serial, error=str(exc))
        return self._apps

    def _artifacts(self, shared: ArtifactStore | None) -> DeviceArtifacts:
        if shared is None:
            return FileArtifacts(self.config.state_dir / DOWNLOADS, self.transport, self.creds)
        return shared.device(self.transport, self.creds)

    def _queue_profile_event(self, event: ProfileEvent) -> None:
        self.queue_event(protocol.event_to_wire(event))

    def _save_state(self) -> None:
        self.state_store.save(self.state)

    async def commit(self, *, full: bool = False) -> None:
        """Make what was queued and saved durable: the outbox first (an event the state says
        happened is never lost), then the state. Awaited before anything is sent and before
        every irreversible change to the device; `full` (at stop) also writes the check-in
        bookkeeping that otherwise waits for the next real write."""
        await self.outbox.commit()
        await self.state_store.commit(full=full)

    def queue_event(self, event: dict[str, Any]) -> str:
        """Stage an event in the outbox (durable at the next commit, sent by the next flush);
        returns its id, drawn from the agent's rng so that a seeded run replays."""
        event = dict(event)
        event.setdefault("at", iso_ms(self.clock.now_ms()))
        event.setdefault("id", str(uuid.UUID(int=self.rng.getrandbits(128), version=4)))
        return self.outbox.put_event(event)

    async def flush(self) -> None:
        """Send what the outbox holds; each item is removed only once the server accepted it."""
        if not self.outbox.count():
            return
        for item in self.outbox.pending(ItemKind.INVENTORY, limit=1):
            body = item.body

            def put(creds: Credentials, body: dict[str, Any] = body) -> Request:
                return protocol.put_apps(creds, body)

            await self.send_as_device(put, "apps")
            self.outbox.ack([item])
            self.state.reported_inventory_hash = protocol.inventory_hash_of(body)
            self.state_store.save(self.state)
        while batch := self.outbox.pending(ItemKind.EVENT, limit=EVENT_BATCH):
            events = [item.body for item in batch]

            def send(creds: Credentials, events: list[dict[str, Any]] = events) -> Request:
                return protocol.events(creds, events)

            await self.send_as_device(send, "events")
            self.outbox.ack(batch)
            self._events_sent += len(batch)

    async def cycle(self) -> CheckinReply:
        """Check in, report, apply what is due, report again; after a new image runs, check in
        again (the server feeds by the reported build), a bounded number of times."""
        profiles, outbox = self.profiles, self.outbox
        for _ in range(MAX_STEPS):
            reply = await self.checkin()
            if outbox.count():  # (the usual cycle has nothing to send: no flush to await)
                await self.flush()
            if reply.profiles or profiles.profiles:
                await profiles.refresh([(p.uuid, p.updated) for p in reply.profiles])
            await profiles.apply()
            if outbox.count():
                await self.flush()
            if not profiles.checkin_needed:
                break
        return reply

    async def run_once(self) -> None:
        wait, self.scan_wait_s = self.scan_wait_s, None  # once: report the whole inventory
        try:
            await self.cycle()
        finally:
            self.scan_wait_s = wait
        await self.commit(full=True)
        if self.scan_error is not None:
            raise self.scan_error

    # -- running for weeks --------------------------------------------------------------------

    def request_stop(self) -> None:
        """End `run()`: its loops are cancelled, then the outbox is flushed once more and the
        state committed. A fleet calls it on each agent (no task per agent waits for a stop);
        called before `run()` began, `run()` only flushes and commits."""
        running = self._running
        if running.stopping:
            return
        running.stopping = True
        if running.task is not None:
            running.task.cancel()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Check in and listen for pushes until `stop` is set or `request_stop()` is called.

        The check-in loop runs in the caller's task and the push listener in one task of its
        own (owned here: cancelled and awaited before run() returns); stopping cancels the
        caller's task, which run() tells from a cancellation from outside by its own request
        (`Task.uncancel`). A `stop` event is waited on by one small task (a rig); a fleet waits
        once and calls `request_stop()` on its agents. An AgentError that ends either loop (e.g.
        the state dir became unwritable) ends run() with that error, the other loop cancelled,
        as a TaskGroup would (a simulated agent is then one task, or two with push, instead of
        three or four and a TaskGroup: 1.4 KB less each, measured with tracemalloc)."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Agent.run() runs in a task")
        loop = asyncio.get_running_loop()
        helpers: list[asyncio.Task[None]] = []
        running = self._running
        running.task, running.failure = task, None
        if self.config.push:
            push = loop.create_task(self._push_loop(), name="push-loop")
            push.add_done_callback(self._push_ended)
            helpers.append(push)
        if stop is not None:
            helpers.append(loop.create_task(self._stop_when(stop), name="stop-waiter"))
        try:
            if not running.stopping:
                await self._checkin_loop()  # it only ends by an exception
        except asyncio.CancelledError:
            running.task = None
            if not running.stopping or task.uncancel() > 0:  # cancelled from outside
                await _cancelled(helpers)
                raise
        except BaseException:
            running.task = None
            await _cancelled(helpers)
            raise
        running.task = None
        await _cancelled(helpers)
        running.stopping = False
        if running.failure is not None:
            raise running.failure
        if self._scan is not None:
            self._scan.cancel()
            await asyncio.gather(self._scan, return_exceptions=True)
            self._scan = None
        with suppress(AgentError, TimeoutError):
            async with asyncio.timeout(self.config.request_timeout_s):
                await self.flush()
        self.state_store.save(self.state)
        await self.commit(full=True)
        log.info("agent.stopped", queued=self.outbox.count())

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.request_stop()

    def _push_ended(self, push: asyncio.Task[None]) -> None:
        """The push listener ended by itself (it never returns): run() ends with its error."""
        if push.cancelled() or push.exception() is None or self._running.task is None:
            return
        self._running.failure = push.exception()
        self.request_stop()

    async def _checkin_loop(self) -> None:
        attempt = 0
        while True:
            checkins = self._checkins
            try:
                reply = await self.cycle()
            except AdminLoginRefused:
                raise  # no retry can fix a wrong --admin-password: run() ends with its message
            except (TransportError, ProtocolError, ApiError, PlatformError) as exc:
                attempt += 1
                self._failures += 1
                retry_after = exc.retry_after if isinstance(exc, ApiError) else None
                reached = self._checkins > checkins  # the check-in went through: no outage
                delay = next_delay(
                    attempt, retry_after, self.rng, interval=self._interval(), reached=reached
                )
                self.state.last_checkin_error = str(exc)
                log.warning(
                    "checkin.failed",
                    device=self.state.serial,
                    error=str(exc),
                    attempt=attempt,
                    retry_in_s=round(delay, 1),
                )
            else:
                attempt = 0
                delay = with_jitter(reply.next_checkin_s, self.rng)
                delay = min(delay, self._recheck_delay())
            # one clock wait, cut short by a nudge (a push message or a platform event); a nudge
            # that came while the cycle ran is not lost
            # the next check-in was meant to go at the deadline, or now if a nudge came first:
            # latency is measured from there, so a late generator shows as latency, not hidden
            self._due = await self._wait_until(self.clock.monotonic(), delay)

    async def _wait_until(self, now: float, delay: float) -> float:
        """Wait `delay` from `now` or until a nudge, whichever is first; a nudge that names a
        later time (`_nudge_at`: a spread sync) only brings the deadline forward to that time.
        Returns the time the next check-in was meant to go."""
        deadline = now + delay
        while True:
            nudged = await self.clock.wait_for(self._nudge, max(0.0, deadline - now))
            if not nudged:
                return deadline
            self._nudge.clear()
            now = self.clock.monotonic()
            at, self._nudge_at = self._nudge_at, None
            deadline = min(deadline, now if at is None else at)
            if now >= deadline:
                return now

    def _interval(self) -> float:
        """The check-in interval the server last gave (the configured one before any): retries
        come no more often than that on average (agent.core.backoff)."""
        return self.state.next_checkin_s or self.config.checkin_interval_s

    def _recheck_delay(self) -> float:
        """Deferred work is looked at again soon: when its time comes, or every 15 s for
        conditions (AC, sleep, network) that a platform does not announce."""
        deferrals = self.profiles.deferrals
        if not deferrals:
            return math.inf
        waits = [d.retry_in_s if d.retry_in_s is not None else RECHECK_S for d in deferrals]
        return max(1.0, min(waits))

    async def _push_loop(self) -> None:
        attempt = 0
        renewed = False  # registered again after a refused handshake since the last connect
        while True:
            await self._enrolled.wait()
            creds = self.creds()
            headers = protocol.device_headers(creds)
            try:
                async with self.transport.open_push(protocol.PUSH, headers) as channel:
                    self.push_connected = True
                    self._server_back.clear()
                    attempt, renewed = 0, False
                    log.info("push.connected", device=self.state.serial)
                    async for message in channel.messages():
                        kind = message.get("type")
                        if kind == "wake":
                            await self._wake()
                        if kind in ("sync", "wake"):
                            log.info("push.nudge", device=self.state.serial, type=kind)
                            self._nudge_for(kind)
            except PushRefused as exc:
                log.info("push.refused", device=self.state.serial, status=exc.status)
                if exc.status == 401:  # revoked (an admin re-save): register again, now
                    self._forget_token(creds.device_token)
                    with suppress(TransportError, ProtocolError, ApiError, PlatformError):
                        await self.ensure_enrolled()  # else the check-in loop says why
                        if not renewed:  # the server answers: one quick try with the new token
                            attempt, renewed = 0, True
            except TransportError as exc:
                log.info("push.closed", device=self.state.serial, reason=str(exc))
                if isinstance(exc, PushClosed) and exc.code == GOING_AWAY:
                    # a shutdown closes every channel at once: no quick retry, which would
                    # bring the whole fleet back in the same second; the check-ins, spread
                    # over their interval, bring each channel back
                    attempt = max(attempt, 1)
            finally:
                self.push_connected = False
            attempt += 1
            # its own backoff, or sooner: a check-in that succeeds says the server is back
            delay = push_delay(attempt, self.rng, interval=self._interval())
            await self.clock.wait_for(self._server_back, delay)
            self._server_back.clear()

    def _nudge_for(self, kind: str) -> None:
        """A wake is answered at once; a sync after a random 0..sync_spread_s seconds."""
        spread = self.config.sync_spread_s
        if kind == "sync" and spread > 0:
            at = self.clock.monotonic() + self.rng.uniform(0, spread)
            if self._nudge_at is None or at < self._nudge_at:
                self._nudge_at = at
        else:
            self._nudge_at = None  # at once, whatever was pending
        self._nudge.set()

    async def _wake(self) -> None:
        try:
            await self.platform.wake()
        except PlatformError as exc:
            log.warning("push.wake_failed", device=self.state.serial, error=str(exc))

    def statistics(self) -> AgentStatistics:
        return AgentStatistics(
            checkins=self._checkins,
            failures=self._failures,
            registrations=self.state.registrations,
            events_sent=self._events_sent,
            push_connected=self.push_connected,
            queued=self.outbox.count(),
            last_error=self.state.last_checkin_error,
        )
