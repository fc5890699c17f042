"""One run of `midm-sim run`: target, setup, fleet and timeline, stop, consistency, report.

Theory of operation: the plan is expanded before anything starts (a bad scenario is exit 2).
The target is the embedded reference server (simulator.embedded) or `--target`, probed first
(unreachable: exit 3 within PROBE_TIMEOUT_S). The admin client logs in; the timeline's setup
generates the uploads, runs the actions due at 0 s and saves every planned device in bulk, so
agents only register. Then t0: one ScaledClock for agents, timeline and kind drivers; the
fleet starts each device at t0 + its arrival, the timeline runs each action at t0 + at_s; the
run ends at its duration or on the first Ctrl-C/SIGTERM (`stop`), every task inside one
TaskGroup. The metrics are frozen as the run ends; then the stopped agents settle, the
consistency check reads the server's record, profile/status gives each profile's scope, and
the report (simulator.report) is written and summed up. Exit: 0 every expectation held, 1 one
failed (each named on stderr), 130 interrupted (the partial report is written all the same).

`devices.saved_twice`: the device/save calls this run made per serial (the admin client counts
them; agents here never save: they have the API key only) beyond the one bulk save and the
timeline's own re-saves of that serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from rich.console import Console

from agent.clock import ScaledClock, SystemClock
from agent.runtime.artifacts import ArtifactStore
from agent.transport.base import Exchange, Observer
from agent.transport.fleet import FleetTransports
from simulator import progress, report
from simulator.admin import AdminClient, AdminRefused, AdminUnauthorized
from simulator.consistency import check, settle
from simulator.embedded import EmbeddedServer, embedded_server
from simulator.errors import RunError, SettingsError
from simulator.fleet import Fleet, FleetSettings
from simulator.heap import HeapKeeper
from simulator.metrics import Metrics
from simulator.plan.expand import expand
from simulator.plan.model import ActionKind, Plan
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
    return expand(
        scenario,
        seed,
        devices=settings.devices,
        duration=settings.duration_s,
        time_scale=settings.time_scale,
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
    outcome = await execute(settings, plan, stop)
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
    out.write(f"report: {outcome.directory / report.JSON_NAME}\n")
    out.write(f"        {outcome.directory / report.HTML_NAME}\n")
    for failed in outcome.failed:
        sys.stderr.write(
            f"midm-sim: expectation failed: {failed['name']}: {failed['expr']} "
            f"(observed {failed['observed']})\n"
        )
    if outcome.interrupted:
        sys.stderr.write("midm-sim: interrupted: the report is partial\n")
    return outcome.exit_code


async def execute(settings: RunSettings, plan: Plan, stop: asyncio.Event) -> Outcome:
    """One run against the embedded server or the target; its report, written."""
    system = SystemClock()
    started_ms = system.now_ms()
    directory = settings.report_dir or default_report_dir(started_ms)
    raise_open_files(len(plan.devices))
    async with contextlib.AsyncExitStack() as stack:
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
        try:
            admin = await stack.enter_async_context(
                AdminClient(
                    url,
                    api_key=api_key,
                    email=email,
                    password=password,
                    observer=relay,
                    clock=clock,
                    timeout_s=ADMIN_TIMEOUT_S,
                )
            )
        except AdminUnauthorized as exc:
            raise SettingsError(
                f"{url} refused the admin login ({exc.message}): check --admin-email, "
                "--admin-password and --api-key"
            ) from None
        saves: list[ActionResult] = []  # profile saves before the metrics exist
        timeline = Timeline(plan, admin, on_action=saves.append)
        await timeline.setup()

        t0 = clock.monotonic()
        server_cpu_t0 = server.cpu_s() if server is not None else None
        metrics = Metrics(time.monotonic, time_scale=plan.time_scale)
        relay.attach(metrics.observe)

        def on_action(result: ActionResult) -> None:
            if result.action is ActionKind.SAVE_PROFILE and result.uuid and not result.error:
                metrics.profile_saved(result.name, result.uuid)

        for result in saves:
            on_action(result)
        timeline.on_action = on_action
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="midm-sim-artifacts-"))
        transports = await stack.enter_async_context(
            FleetTransports(url, timeout_s=REQUEST_TIMEOUT_S, clock=clock, observer=metrics.observe)
        )
        fleet = Fleet(
            plan,
            FleetSettings(server_url=url, api_key=api_key, request_timeout_s=REQUEST_TIMEOUT_S),
            clock=clock,
            transports=transports,
            artifacts=ArtifactStore(Path(scratch)),
            on_event=metrics.device_event,
        )
        duration_real = plan.duration_s / plan.time_scale
        display = progress.ProgressDisplay(
            lambda: progress.figures(
                metrics.statistics(),
                devices_up=fleet.up,
                devices_planned=len(plan.devices),
                duration_s=duration_real,
            ),
            live=None if settings.progress else False,
        )
        ended = asyncio.Event()
        real_start = time.monotonic()
        interrupted = stop.is_set()
        keeper = HeapKeeper()
        with display:
            async with keeper, metrics.generator_probe(), asyncio.TaskGroup() as group:
                if not interrupted:
                    group.create_task(fleet.run(ended, t0=t0), name="fleet")
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
        duration_s = time.monotonic() - real_start
        snapshot = metrics.snapshot()
        server_cpu = _cpu_since(server, server_cpu_t0)
        log.info("runner.stopped", seconds=round(duration_s, 3), interrupted=interrupted)

        settled = await settle(fleet.devices, also=timeline.resaved)
        consistency = await check(
            fleet.devices,
            admin,
            {name: kind.build.fingerprint for name, kind in plan.kinds.items()},
            settled=settled,
        )
        server_status = await _profile_status(admin, timeline.profiles)
        stats = fleet.statistics()
        built = report.build(
            plan,
            snapshot,
            target=url if settings.target else f"{url} (embedded midm-server)",
            started=datetime.fromtimestamp(started_ms / 1000, tz=UTC).isoformat(),
            duration_s=duration_s,
            devices={
                "started": stats.started,
                "enrolled": stats.enrolled,
                "failed": stats.failed,
                "saved_twice": saved_twice(admin.saves, expected_saves(plan)),
            },
            consistency=consistency.to_json(),
            server_status=server_status,
            partial=interrupted,
        )
        built["generator"]["gc"] = keeper.figures().to_json()
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
                "error": r.error,
            }
            for r in timeline.results
        ]
        report.write(directory, built)
    return Outcome(report=built, directory=directory, interrupted=interrupted)


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
