"""One run of `midm-sim run`: target, setup, fleet and timeline, stop, consistency, report.

Theory of operation: the plan is expanded before anything starts (a bad scenario is exit 2).
The target is the embedded reference server (simulator.embedded) or `--target`, probed first
(unreachable: exit 3 within PROBE_TIMEOUT_S). The admin client logs in; the timeline's setup
generates the uploads, runs the actions due at 0 s and saves every planned device in bulk, so
agents only register. Then t0: one ScaledClock for agents, timeline and kind drivers; the
fleet starts each device at t0 + its arrival, the timeline runs each action at t0 + at_s; the
run ends at its duration or on the first Ctrl-C/SIGTERM (`stop`), every task inside one
TaskGroup. The metrics are frozen as the run ends; then the stopped agents settle, the
consistency check reads the server's record, profile/status gives each profile's scope, the
event ledger (simulator.ledger) finds every event an agent queued on the server exactly once
(`events.lost`, `events.duplicated`, `events.pending`), and the report (simulator.report) is
written and summed up. Exit: 0 every expectation held, 1 one
failed (each named on stderr), 130 interrupted (the partial report is written all the same).

`devices.saved_twice`: the device/save calls this run made per serial (the admin client counts
them; agents here never save: they have the API key only) beyond the one bulk save and the
timeline's own re-saves of that serial.

Shards (`--shard I/N`, N > 1; simulator/shards.py has the decisions): every shard expands the
whole plan and runs its own devices (simulator/plan/shards.py). Shard 0 runs the set-up and the
timeline as above, then publishes the run's t0 (a little ahead) on the target; the others wait
for it, then schedule their agents and count their metrics from that same t0 (their agents'
clock is set to shard 0's simulated wall clock at t0). A shard writes `<--report>/shard-<I>`
and checks no expectations (the merge does): its exit is 0 when its part ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from rich.console import Console

from agent.clock import ScaledClock, SystemClock
from agent.runtime.artifacts import ArtifactStore
from agent.runtime.outbox import ItemKind
from agent.transport.base import Exchange, Observer
from agent.transport.fleet import FleetTransports
from agent.transport.lean import LeanFleetTransports
from simulator import progress, prometheus, report, shards
from simulator.admin import AdminClient, AdminError, AdminRefused, AdminUnauthorized
from simulator.consistency import check, settle
from simulator.embedded import EmbeddedServer, embedded_server
from simulator.errors import RunError, SettingsError
from simulator.fleet import Device, Fleet, FleetSettings, Transports
from simulator.heap import HeapKeeper
from simulator.ledger import EventLedger, EventsCheck, reconcile
from simulator.metrics import Metrics
from simulator.plan import serials
from simulator.plan.expand import expand
from simulator.plan.model import ActionKind, Plan
from simulator.plan.shards import Shard, resaved, serials_digest, shard_plan
from simulator.scenario import load
from simulator.timeline import ActionResult, Timeline

log = structlog.get_logger("simulator.runner")
PROBE_TIMEOUT_S = 8.0  # an unreachable target is reported well within 10 s
REQUEST_TIMEOUT_S = 10.0  # an agent's request, connect to last byte
ADMIN_TIMEOUT_S = 30.0  # an admin call (uploads of images take longer)
SAMPLE_S = 0.25  # open WebSockets are counted this often (real seconds)
PROGRESS_S = 1.0
SUMMARY_WIDTH = 120
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
FDS_PER_DEVICE = 2  # a push channel and a pooled connection
FDS_SPARE = 512
LOGIN_ATTEMPTS = 6  # an admin login answered 429/503 (the server's login queue is full: many
LOGIN_RETRY_S = 0.5  # shards log in at once) is tried again after 0.5, 1, 2, 4, 8 s (+ jitter)
LATE_WARNING_S = 1.0  # a shard whose fleet starts later than this after t0 says so


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """What `midm-sim run` was asked (built once by the CLI)."""

    scenario: Path
    target: str | None = None  # None: the embedded reference server
    api_key: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None
    devices: int | None = None
    duration_s: float | None = None
    seed: int | None = None
    time_scale: float | None = None
    report_dir: Path | None = None
    progress: bool = True
    shard: Shard = field(default_factory=Shard)  # the whole run
    run_id: str | None = None  # shards of one run share it (required when shard.count > 1)
    workers: int = 1  # > 1: simulator.workers runs that many shards on this machine
    allow_remote: bool = False  # (passed on to workers)
    log_level: str = "error"  # (passed on to workers)
    metrics_port: int | None = None  # serve live figures for Prometheus (simulator.prometheus)
    metrics_host: str = prometheus.DEFAULT_HOST
    transport: str = "aiohttp"  # the agents' HTTP client: aiohttp, or lean (agent.transport.lean)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    report: dict[str, Any]
    directory: Path
    interrupted: bool

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.report.get("expectations", []) if not e.get("passed")]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed else EXIT_OK


# -- settings and plan ---------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """`localhost` (and *.localhost), 127.0.0.0/8 and ::1; names are not resolved."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_target(url: str, *, allow_remote: bool) -> None:
    """SettingsError unless `url` is an http(s) URL, on loopback or with `allow_remote`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"--target {url!r}: give an http:// or https:// URL with a host")
    if not allow_remote and not is_loopback(parts.hostname):
        raise SettingsError(
            f"--target {url}: {parts.hostname} is not a loopback address; "
            "add --allow-remote to run a fleet against it"
        )


def plan_of(settings: RunSettings) -> Plan:
    """The scenario validated and expanded with the flags' overrides (SettingsError)."""
    scenario = load(settings.scenario)
    seed = scenario.seed if settings.seed is None else settings.seed
    plan = expand(
        scenario,
        seed,
        devices=settings.devices,
        duration=settings.duration_s,
        time_scale=settings.time_scale,
    )
    check_restarts(plan, settings)
    return plan


def check_restarts(plan: Plan, settings: RunSettings) -> None:
    """restart_server restarts the embedded server: SettingsError with --target (a server the
    simulator does not own) or --workers (the server is the parent's, the timeline a child's)."""
    restart = next((a for a in plan.timeline if a.action is ActionKind.RESTART_SERVER), None)
    if restart is None:
        return
    flag = (
        "--target" if settings.target is not None else "--workers" if settings.workers > 1 else None
    )
    if flag is not None:
        raise SettingsError(
            f"{settings.scenario}: timeline action restart_server (at_s {restart.at_s:g}) "
            f"restarts the embedded server: it cannot run with {flag}"
        )


def default_report_dir(now_ms: int) -> Path:
    moment = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    return Path("sim-report") / moment.strftime("%Y%m%d-%H%M%S")


def expected_saves(plan: Plan) -> Counter[str]:
    """device/save calls each serial should see: the bulk save, and each timeline re-save."""
    counts: Counter[str] = Counter(d.serial for d in plan.devices)
    for action in plan.timeline:
        if action.action is ActionKind.RESAVE_DEVICES:
            counts.update(action.args.get("serials") or ())
    return counts


def saved_twice(saves: Mapping[str, int], expected: Mapping[str, int]) -> int:
    """Serials saved more often than the plan says."""
    return sum(1 for serial, n in saves.items() if n > expected.get(serial, 0))


def checkin_interval(plan: Plan) -> int | None:
    """The embedded server's check-in interval: the shortest a kind asks for, if any."""
    asked = [k.checkin_interval_s for k in plan.kinds.values() if k.checkin_interval_s]
    return max(1, math.ceil(min(asked))) if asked else None


def raise_open_files(devices: int) -> None:
    """Every push channel and pooled connection is a file descriptor: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = devices * FDS_PER_DEVICE + FDS_SPARE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning("runner.few_files", limit=target, wanted=wanted)


# -- small adapters ------------------------------------------------------------------------


class Relay:
    """An observer that holds exchanges until the metrics exist (setup runs before t0), then
    passes them, and every later one, on."""

    def __init__(self) -> None:
        self._held: list[Exchange] = []
        self._target: Observer | None = None

    def __call__(self, exchange: Exchange, /) -> None:
        if self._target is None:
            self._held.append(exchange)
        else:
            self._target(exchange)

    def attach(self, target: Observer) -> None:
        held, self._held = self._held, []
        for exchange in held:
            target(exchange)
        self._target = target


async def probe(url: str) -> None:
    """Any HTTP answer from `url` within PROBE_TIMEOUT_S, or RunError (exit 3)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as http,
            http.get(url.rstrip("/") + "/portal/V1/auth/token-verify") as answer,
        ):
            await answer.read()
    except TimeoutError:
        raise RunError(f"cannot reach {url}: no answer within {PROBE_TIMEOUT_S:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise RunError(f"cannot reach {url}: {exc}") from None


# -- the run -------------------------------------------------------------------------------


async def main(settings: RunSettings, plan: Plan, stop: asyncio.Event) -> int:
    """Run, print the summary and the failed expectations; the exit status."""
    shared = serials.warning(serials.duplicates(d.serial for d in plan.devices))
    if shared is not None and settings.shard.runs_timeline:  # said once, by shard 0
        sys.stderr.write(f"midm-sim: warning: {shared}\n")
    outcome = await execute(settings, plan, stop)
    show(outcome)
    return outcome.exit_code


def show(outcome: Outcome) -> None:
    """The summary table, the CPU line, where the report is, each failed expectation."""
    # off a terminal rich assumes 80 columns: the endpoint names would be cut
    console = Console() if sys.stdout.isatty() else Console(width=SUMMARY_WIDTH)
    report.print_summary(outcome.report, console)
    out = sys.stdout
    server = outcome.report.get("server")
    if server:
        generator = outcome.report["generator"]
        out.write(
            f"cpu: generator {generator['cpu_s']} s ({generator['cpu_share']} of the run), "
            f"embedded server {server['cpu_s']} s ({server['cpu_share']})\n"
        )
    shard = outcome.report.get("shard") or {}
    if shard.get("index") is not None and int(shard.get("count") or 1) > 1:
        out.write(
            f"shard {shard['index']}/{shard['count']} of run {shard.get('run_id')}: the "
            "expectations are checked on the merged report (midm-sim merge)\n"
        )
    out.write(f"report: {outcome.directory / report.JSON_NAME}\n")
    out.write(f"        {outcome.directory / report.HTML_NAME}\n")
    for failed in outcome.failed:
        sys.stderr.write(
            f"midm-sim: expectation failed: {failed['name']}: {failed['expr']} "
            f"(observed {failed['observed']})\n"
        )
    if outcome.interrupted:
        sys.stderr.write("midm-sim: interrupted: the report is partial\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Begin:
    """When this process's fleet starts: `t0` on the agents' clock, `t0_real` on
    time.monotonic(); for a shard, the run's t0 and how this shard met it."""

    clock: ScaledClock
    t0: float
    t0_real: float
    start: shards.Start | None = None
    rendezvous: shards.Rendezvous | None = None
    late_s: float = 0.0  # how long after t0 this shard met it


async def execute(settings: RunSettings, plan: Plan, stop: asyncio.Event) -> Outcome:
    """One run (or shard) against the embedded server or the target; its report, written."""
    system = SystemClock()
    started_ms = system.now_ms()
    shard = settings.shard
    directory = settings.report_dir or default_report_dir(started_ms)
    if not shard.whole:
        directory = shards.shard_folder(directory, shard)
    mine = shard_plan(plan, shard)  # this process's devices
    raise_open_files(len(mine.devices))
    async with contextlib.AsyncExitStack() as stack:
        exporter: prometheus.Exporter | None = None
        if settings.metrics_port is not None:  # first: a port in use is exit 2 at once
            info = prometheus.run_info(plan, str(shard))
            exporter = await stack.enter_async_context(
                prometheus.serve(settings.metrics_host, settings.metrics_port, info=info)
            )
            sys.stderr.write(f"midm-sim: metrics: {exporter.url}\n")
        server: EmbeddedServer | None = None
        if settings.target is None:
            server = await stack.enter_async_context(
                embedded_server(checkin_interval_s=checkin_interval(plan))
            )
            url, creds = server.url, server.credentials
            api_key, email, password = creds.api_key, creds.admin_email, creds.admin_password
        else:
            url = settings.target.rstrip("/")
            await probe(url)
            api_key = settings.api_key or ""
            email, password = settings.admin_email or "", settings.admin_password or ""
        clock = ScaledClock(plan.time_scale)
        relay = Relay()
        admin = await stack.enter_async_context(
            _AdminLogin(
                AdminClient(
                    url,
                    api_key=api_key,
                    email=email,
                    password=password,
                    observer=relay,
                    clock=clock,
                    timeout_s=ADMIN_TIMEOUT_S,
                ),
                rng=random.Random(plan.seed ^ shard.index),  # noqa: S311 - retry jitter
            )
        )
        saves: list[ActionResult] = []  # profile saves before the metrics exist
        timeline = Timeline(plan, admin, on_action=saves.append, server=server)
        begin = await _begin(settings, plan, admin, timeline, clock, system, stop)
        clock = begin.clock
        server_cpu_t0 = server.cpu_s() if server is not None else None
        metrics = Metrics(time.monotonic, time_scale=plan.time_scale, origin=begin.t0_real)
        relay.attach(metrics.observe)

        def on_action(result: ActionResult) -> None:
            if result.action is ActionKind.SAVE_PROFILE and result.uuid and not result.error:
                metrics.profile_saved(result.name, result.uuid)

        for result in saves:  # the set-up's saves: actions at 0 s
            if result.action is ActionKind.SAVE_PROFILE and result.uuid and not result.error:
                metrics.profile_saved(result.name, result.uuid, at_s=0.0)
        timeline.on_action = on_action
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="midm-sim-artifacts-"))
        transports: Transports
        if settings.transport == "lean":
            transports = await stack.enter_async_context(
                LeanFleetTransports(
                    url, timeout_s=REQUEST_TIMEOUT_S, clock=clock, observer=metrics.observe
                )
            )
        else:
            transports = await stack.enter_async_context(
                FleetTransports(
                    url, timeout_s=REQUEST_TIMEOUT_S, clock=clock, observer=metrics.observe
                )
            )
        ledger = EventLedger()

        def on_event(serial: str, event: Mapping[str, Any]) -> None:
            metrics.device_event(serial, event)
            ledger(serial, event)

        fleet = Fleet(
            mine,
            FleetSettings(server_url=url, api_key=api_key, request_timeout_s=REQUEST_TIMEOUT_S),
            clock=clock,
            transports=transports,
            artifacts=ArtifactStore(Path(scratch)),
            on_event=on_event,
        )
        if exporter is not None:
            exporter.attach(
                prometheus.RunCollector(
                    metrics,
                    lambda: prometheus.DeviceCounts(
                        planned=len(mine.devices), started=len(fleet.devices), running=fleet.up
                    ),
                )
            )
        duration_real = plan.duration_s / plan.time_scale
        display = progress.ProgressDisplay(
            lambda: progress.figures(
                metrics.statistics(),
                devices_up=fleet.up,
                devices_planned=len(mine.devices),
                duration_s=duration_real,
            ),
            live=None if settings.progress else False,
        )
        ended = asyncio.Event()
        t0 = begin.t0
        interrupted = stop.is_set() or (begin.start is None and not shard.whole)
        keeper = HeapKeeper()
        with display:
            async with keeper, metrics.generator_probe(), asyncio.TaskGroup() as group:
                if not interrupted:
                    group.create_task(fleet.run(ended, t0=t0), name="fleet")
                    if shard.runs_timeline:
                        group.create_task(timeline.run(ended, t0=t0), name="timeline")
                    group.create_task(_count_websockets(fleet, metrics, ended), name="ws")
                    group.create_task(display.run(ended, system, PROGRESS_S), name="progress")
                    interrupted = await clock.wait_for(
                        stop, t0 + plan.duration_s - clock.monotonic()
                    )
                # the run's send lag ends with the run: stopping thousands of agents stalls
                # the loop, and that is not a stall the devices' schedules suffered
                await metrics.stop_generator_probe()
                ended.set()
        duration_s = max(0.0, time.monotonic() - begin.t0_real)
        snapshot = metrics.snapshot()
        server_cpu = _cpu_since(server, server_cpu_t0)
        log.info("runner.stopped", seconds=round(duration_s, 3), interrupted=interrupted)

        serials = {d.serial for d in mine.devices}
        also = (
            timeline.resaved
            if shard.runs_timeline
            else resaved(plan, serials, duration_s * plan.time_scale)
        )
        settled = await settle(fleet.devices, also=also)
        consistency = await check(
            fleet.devices,
            admin,
            {name: kind.build.fingerprint for name, kind in plan.kinds.items()},
            settled=settled,
        )
        server_status = await _profile_status(admin, timeline.profiles)
        events = await _events_check(fleet.devices, admin, ledger)
        stats = fleet.statistics()
        built = report.build(
            plan,
            snapshot,
            target=url if settings.target else f"{url} (embedded midm-server)",
            started=datetime.fromtimestamp(started_ms / 1000, tz=UTC).isoformat(),
            duration_s=duration_s,
            devices={
                "planned": len(mine.devices),
                "started": stats.started,
                "enrolled": stats.enrolled,
                "failed": stats.failed,
                "saved_twice": saved_twice(admin.saves, expected_saves(plan)),
            },
            consistency=consistency.to_json(),
            events=None if events is None else _event_counts(events),
            server_status=server_status,
            shard=(shard.index, shard.count),
            shard_info=None if shard.whole else _shard_info(settings, mine, begin),
            partial=interrupted,
            judge=shard.whole,
            warnings=_late_warning(shard, begin),
        )
        built["generator"]["gc"] = keeper.figures().to_json()
        built["generator"]["transport"] = settings.transport
        if events is not None and events.violations:
            built["events_violations"] = events.violations
        built["fleet"] = {
            "start_lag_ms": stats.start_lag_ms,
            "checkins": stats.checkins,
            "checkin_failures": stats.checkin_failures,
            "agent_errors": [{"serial": s, "error": e} for s, e in stats.errors],
            "consistency_settled": settled,
        }
        if server_cpu is not None:
            built["server"] = {
                "process": "embedded midm-server",
                "cpu_s": round(server_cpu, 3),
                "cpu_share": round(server_cpu / duration_s, 3) if duration_s > 0 else None,
            }
        built["admin_timeline"] = [
            {
                "at_s": r.at_s,
                "action": str(r.action),
                "name": r.name,
                "started_s": round(r.started_s, 3),
                "duration_s": round(r.duration_s, 3),
                "error": r.error,
            }
            for r in timeline.results
        ]
        report.write(directory, built)
    return Outcome(report=built, directory=directory, interrupted=interrupted)


async def _begin(
    settings: RunSettings,
    plan: Plan,
    admin: AdminClient,
    timeline: Timeline,
    clock: ScaledClock,
    system: SystemClock,
    stop: asyncio.Event,
) -> _Begin:
    """Set up (shard 0) or meet shard 0's t0 (the others); when the fleet starts."""
    shard, rate = settings.shard, plan.time_scale
    if shard.runs_timeline:
        await timeline.setup()
        if shard.whole:
            return _Begin(clock=clock, t0=clock.monotonic(), t0_real=time.monotonic())
        margin = shards.START_MARGIN_S
        start = shards.Start(
            t0_ms=system.now_ms() + round(margin * 1000),
            clock_ms=clock.now_ms() + round(margin * rate * 1000),
        )
        t0, t0_real = clock.monotonic() + margin * rate, time.monotonic() + margin
        await shards.publish(admin, settings.run_id or "", start)
        return _Begin(clock=clock, t0=t0, t0_real=t0_real, start=start)
    met = await shards.wait_for_start(admin, settings.run_id or "", stop)
    if met.start is None:  # stopped while waiting
        return _Begin(clock=clock, t0=clock.monotonic(), t0_real=time.monotonic(), rendezvous=met)
    start, now_ms = met.start, system.now_ms()
    # the agents' simulated wall clock agrees with shard 0's: at t0 it reads start.clock_ms
    agents = ScaledClock(rate, start_ms=start.clock_ms + round((now_ms - start.t0_ms) * rate))
    ahead_s = (start.t0_ms - now_ms) / 1000  # negative: this shard is late
    return _Begin(
        clock=agents,
        t0=agents.monotonic() + ahead_s * rate,
        t0_real=time.monotonic() + ahead_s,
        start=start,
        rendezvous=met,
        late_s=max(0.0, -ahead_s),
    )


def _shard_info(settings: RunSettings, mine: Plan, begin: _Begin) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": settings.run_id,
        "devices": len(mine.devices),
        "serials_sha256": serials_digest(mine.devices),
    }
    if begin.start is not None:
        info["t0"] = datetime.fromtimestamp(begin.start.t0_ms / 1000, tz=UTC).isoformat()
    if begin.rendezvous is not None:
        info["rendezvous"] = {
            "polls": begin.rendezvous.polls,
            "waited_s": round(begin.rendezvous.waited_s, 3),
            "late_s": round(begin.late_s, 3),
        }
    return info


async def _events_check(
    devices: Sequence[Device], admin: AdminClient, ledger: EventLedger
) -> EventsCheck | None:
    """Every event this process's agents queued, against the server's record (None: the
    server's record could not be read; the report then has no events.lost)."""
    try:
        rows = await admin.devices()
        events = await admin.events()
    except AdminError as exc:
        log.warning("runner.events_unchecked", error=str(exc))
        return None
    mine = {d.planned.serial for d in devices}
    serial_of = {}
    for row in rows:
        serial = str(row.get("profile", {}).get("hardware_info", {}).get("serial_no", ""))
        if serial in mine:
            serial_of[str(row.get("uuid"))] = serial
    pending: dict[str, set[str]] = {}  # by serial: two devices may share one (never merged)
    for d in devices:
        pending.setdefault(d.planned.serial, set()).update(
            str(item.body.get("id")) for item in d.agent.outbox.pending(ItemKind.EVENT, 1 << 30)
        )
    return reconcile(ledger.queued(), pending, events, serial_of)


def _event_counts(check: EventsCheck) -> dict[str, int]:
    return {
        "lost": check.lost,
        "duplicated": check.duplicated,
        "pending": check.pending,
        "on_server": check.on_server,
    }


def _late_warning(shard: Shard, begin: _Begin) -> list[str]:
    if begin.late_s <= LATE_WARNING_S:
        return []
    return [
        f"shard {shard} met the run's t0 {begin.late_s:.1f} s late (shard 0 was ready before "
        "it): its first arrivals started late"
    ]


class _AdminLogin(contextlib.AbstractAsyncContextManager[AdminClient]):
    """`async with` the admin client, its login tried again while the target answers 429/503
    (every shard logs in at once); a refused login is a SettingsError (exit 2)."""

    def __init__(self, admin: AdminClient, *, rng: random.Random) -> None:
        self.admin, self.rng = admin, rng

    async def __aenter__(self) -> AdminClient:
        attempt = 0
        while True:
            try:
                return await self.admin.__aenter__()
            except AdminUnauthorized as exc:
                raise SettingsError(
                    f"{self.admin.base_url} refused the admin login ({exc.message}): check "
                    "--admin-email, --admin-password and --api-key"
                ) from None
            except AdminRefused as exc:
                attempt += 1
                if exc.status not in (429, 503) or attempt >= LOGIN_ATTEMPTS:
                    raise
                delay = LOGIN_RETRY_S * 2 ** (attempt - 1) * (1 + self.rng.random())
                log.info("runner.login_retry", status=exc.status, delay_s=round(delay, 3))
                await asyncio.sleep(delay)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.admin.close()


def _cpu_since(server: EmbeddedServer | None, start: float | None) -> float | None:
    """The embedded server's CPU seconds since `start` (None: not measurable)."""
    now = server.cpu_s() if server is not None else None
    return None if now is None or start is None else now - start


async def _count_websockets(fleet: Fleet, metrics: Metrics, ended: asyncio.Event) -> None:
    real = SystemClock()
    while not await real.wait_for(ended, SAMPLE_S):
        metrics.websockets(fleet.websockets())


async def _profile_status(
    admin: AdminClient, profiles: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """profile/status counts by profile name (the convergence's denominators)."""
    found: dict[str, dict[str, Any]] = {}
    for name, uuid in profiles.items():
        try:
            status = await admin.profile_status(uuid)
        except AdminRefused as exc:  # e.g. removeIfNoScope deleted it
            log.warning("runner.profile_status_failed", profile=name, error=str(exc))
            continue
        found[name] = {k: v for k, v in status.items() if k != "devices"}
    return found
