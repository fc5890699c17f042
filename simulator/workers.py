"""`midm-sim run --workers W`: W processes on this machine, each one shard of the fleet, merged.

Theory of operation: the CLI has expanded the plan already (bad settings: exit 2 before anything
starts). The parent makes a run id, provides ONE target for every worker (the embedded reference
server, started once, or `--target`) and starts W children `python -m simulator.cli run SCENARIO
--shard i/W --run-id R --target URL --report DIR --no-progress [the plan's overrides]`, each in
a session of its own (a Ctrl-C at the terminal reaches the parent only). The target's
credentials reach the children in their environment (MIDM_API_KEY, MIDM_ADMIN_EMAIL,
MIDM_ADMIN_PASSWORD), never on a command line that another user could read in `ps`. Shard 0
sets the target up and publishes the run's t0; the others meet it (simulator/shards.py). Each
child's stderr is relayed line by line, prefixed `shard i/W: `, and kept in
`DIR/shard-i/worker.log`. When every child has ended, the parent merges `DIR/shard-*/report.json`
(simulator.shards.check, report.merge) into `DIR/report.json` and `report.html`, adds the
embedded server's CPU and each worker's exit, prints the summary and exits as one run does:
0 every expectation of the merged report held, 1 one failed.

Stopping: the first Ctrl-C/SIGTERM sends SIGTERM to every child (each stops cleanly and writes
its partial report); the partial reports are merged (a missing one allowed) and the exit is 130.
A child that fails (exit 2 or 3) stops the others the same way; the partial merge is written and
the parent exits 3 (2 if the child's settings were refused), quoting the child's last line.
However the parent leaves (a second Ctrl-C cancels it), children still running get SIGTERM and,
after STOP_TIMEOUT_S, SIGKILL; the embedded server is stopped after them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from agent.clock import SystemClock
from simulator import prometheus, report, shards
from simulator.embedded import embedded_server, process_cpu_s
from simulator.errors import RunError, SettingsError
from simulator.plan.model import Plan
from simulator.plan.shards import Shard
from simulator.runner import (
    EXIT_INTERRUPTED,
    Outcome,
    RunSettings,
    checkin_interval,
    default_report_dir,
    show,
)

log = structlog.get_logger("simulator.workers")
WORKER_LOG = "worker.log"
STOP_TIMEOUT_S = 30.0  # after SIGTERM, a worker that is still there is killed
TAIL_LINES = 5
OK_EXITS = (0, EXIT_INTERRUPTED)  # a shard's part ran (or was stopped cleanly)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The one backend every worker runs against."""

    url: str
    api_key: str
    admin_email: str
    admin_password: str = field(repr=False)
    embedded: bool = False
    pid: int | None = None  # the embedded server's


def new_run_id() -> str:
    return secrets.token_hex(8)


def child_command(
    settings: RunSettings, shard: Shard, *, run_id: str, url: str, directory: Path
) -> list[str]:
    """A worker's command line: the parent's plan (scenario and overrides), its shard, the
    shared target and report folder, its --metrics-port (P+i). No credentials (child_env
    carries them)."""
    command = [
        sys.executable, "-m", "simulator.cli", "--log-level", settings.log_level,
        "run", str(settings.scenario), "--shard", str(shard), "--run-id", run_id,
        "--target", url, "--report", str(directory), "--no-progress",
    ]  # fmt: skip
    if settings.allow_remote:
        command.append("--allow-remote")
    if settings.transport != "aiohttp":
        command += ["--transport", settings.transport]
    if settings.metrics_port is not None:  # worker i serves its own shard's figures on P+i
        port = prometheus.worker_port(settings.metrics_port, shard.index)
        command += ["--metrics-port", str(port), "--metrics-host", settings.metrics_host]
    overrides = (
        ("--devices", settings.devices),
        ("--duration", settings.duration_s),
        ("--seed", settings.seed),
        ("--time-scale", settings.time_scale),
    )
    for flag, value in overrides:
        if value is not None:
            command += [flag, str(value)]  # str(float) round-trips exactly
    return command


def child_env(base: Mapping[str, str], target: Target) -> dict[str, str]:
    """The parent's environment with the target's credentials."""
    return {
        **base,
        "MIDM_API_KEY": target.api_key,
        "MIDM_ADMIN_EMAIL": target.admin_email,
        "MIDM_ADMIN_PASSWORD": target.admin_password,
    }


@contextlib.asynccontextmanager
async def provide_target(settings: RunSettings, plan: Plan) -> AsyncIterator[Target]:
    """The embedded server (one for all workers) or the given target."""
    if settings.target is not None:
        yield Target(
            url=settings.target.rstrip("/"),
            api_key=settings.api_key or "",
            admin_email=settings.admin_email or "",
            admin_password=settings.admin_password or "",
        )
        return
    async with embedded_server(checkin_interval_s=checkin_interval(plan)) as server:
        creds = server.credentials
        yield Target(
            url=server.url,
            api_key=creds.api_key,
            admin_email=creds.admin_email,
            admin_password=creds.admin_password,
            embedded=True,
            pid=server.pid,
        )


@dataclass(slots=True, kw_only=True)
class Worker:
    shard: Shard
    folder: Path
    process: asyncio.subprocess.Process
    log: IO[str]
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )
    exit: int | None = None
    signalled: bool = False  # the parent sent it SIGTERM (or SIGKILL)

    @property
    def failed(self) -> bool:
        """It ended otherwise than done or stopped cleanly (killed by the signal the parent
        sent, e.g. before it could handle one, is a stop too)."""
        if self.exit is None or self.exit in OK_EXITS:
            return False
        return not (self.signalled and self.exit < 0)


async def relay(worker: Worker, out: IO[str]) -> None:
    """The child's stderr to its log and, prefixed, to `out`, until it ends; then its exit."""
    stream = worker.process.stderr
    assert stream is not None
    prefix = f"shard {worker.shard}: "
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip("\n")
        worker.tail.append(text)
        worker.log.write(text + "\n")
        worker.log.flush()
        out.write(prefix + text + "\n")
        out.flush()
    worker.exit = await worker.process.wait()
    log.info("workers.ended", shard=str(worker.shard), exit=worker.exit)


def terminate(workers: Sequence[Worker], how: signal.Signals = signal.SIGTERM) -> None:
    """Signal every child that is still running (by its own pid)."""
    for worker in workers:
        if worker.process.returncode is None:
            worker.signalled = True
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(how)


@dataclass(frozen=True, slots=True, kw_only=True)
class Supervised:
    interrupted: bool  # `stop` was set
    failed: Worker | None  # the first worker that failed


async def supervise(workers: Sequence[Worker], stop: asyncio.Event, out: IO[str]) -> Supervised:
    """Relay every child until all have ended; on `stop` or a child's failure, SIGTERM the
    others (once)."""
    first_failed: Worker | None = None
    async with asyncio.TaskGroup() as group:
        relays = {group.create_task(relay(w, out), name=f"relay-{w.shard}"): w for w in workers}
        stopper = group.create_task(stop.wait(), name="stop")
        pending: set[asyncio.Task[Any]] = {*relays, stopper}
        signalled = False
        while pending & relays.keys():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failed = [relays[t] for t in done if t in relays and relays[t].failed]
            if failed and first_failed is None:
                first_failed = failed[0]
            if (stopper in done or failed) and not signalled:
                signalled = True
                terminate(workers)
        stopper.cancel()
    return Supervised(interrupted=stop.is_set(), failed=first_failed)


async def reap(workers: Sequence[Worker]) -> None:
    """SIGTERM the children still running, SIGKILL those still there after STOP_TIMEOUT_S.
    Shielded: a second cancellation cannot leave a worker behind."""
    running = [w for w in workers if w.process.returncode is None]
    if not running:
        return

    async def wait_or_kill() -> None:
        terminate(running)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*(w.process.wait() for w in running))
        except TimeoutError:
            terminate(running, signal.SIGKILL)
            await asyncio.gather(*(w.process.wait() for w in running))

    waiting = asyncio.ensure_future(wait_or_kill())
    try:
        await asyncio.shield(waiting)
    except asyncio.CancelledError:
        await waiting
        raise


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkersOutcome:
    outcome: Outcome | None  # None: no worker wrote a report
    failed: Worker | None  # the first worker that failed


async def execute(
    settings: RunSettings, plan: Plan, stop: asyncio.Event, env: Mapping[str, str]
) -> WorkersOutcome:
    """Run the workers, merge their reports into `--report`; the merged outcome."""
    count = settings.workers
    run_id = settings.run_id or new_run_id()
    directory = settings.report_dir or default_report_dir(SystemClock().now_ms())
    workers: list[Worker] = []
    async with contextlib.AsyncExitStack() as stack:
        target = await stack.enter_async_context(provide_target(settings, plan))
        sys.stderr.write(
            f"midm-sim: {count} workers (run {run_id}) against {target.url}; "
            f"their logs: {directory}/shard-*/{WORKER_LOG}\n"
        )
        cpu_t0 = process_cpu_s(target.pid) if target.pid is not None else None
        try:
            for index in range(count):
                shard = Shard(index=index, count=count)
                folder = shards.shard_folder(directory, shard)
                folder.mkdir(parents=True, exist_ok=True)
                for stale in (report.JSON_NAME, report.HTML_NAME):  # of an earlier run
                    (folder / stale).unlink(missing_ok=True)
                log_file = stack.enter_context((folder / WORKER_LOG).open("w", encoding="utf-8"))
                command = child_command(
                    settings, shard, run_id=run_id, url=target.url, directory=directory
                )
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    env=child_env(env, target),
                    start_new_session=True,  # the terminal's Ctrl-C is the parent's to pass on
                )
                workers.append(Worker(shard=shard, folder=folder, process=process, log=log_file))
            supervised = await supervise(workers, stop, sys.stderr)
        finally:
            await reap(workers)
        cpu_t1 = process_cpu_s(target.pid) if target.pid is not None else None
    interrupted, failed = supervised.interrupted, supervised.failed
    sources = [
        shards.Source(path=w.folder, report=report.read(w.folder))
        for w in workers
        if (w.folder / report.JSON_NAME).is_file()
    ]
    if not sources:
        if interrupted or failed is not None:
            return WorkersOutcome(outcome=None, failed=failed)
        raise RunError(f"no worker wrote a report (see {directory}/shard-*/{WORKER_LOG})")
    verdict = shards.check(sources, allow_missing=interrupted or failed is not None)
    merged = report.merge(
        [s.report for s in sources], warnings=verdict.warnings, missing=verdict.missing
    )
    if target.embedded:
        merged["target"] = f"{target.url} (embedded midm-server)"
        if cpu_t0 is not None and cpu_t1 is not None:
            duration = float(merged["duration_s"])
            merged["server"] = {
                "process": "embedded midm-server",
                "cpu_s": round(cpu_t1 - cpu_t0, 3),
                "cpu_share": round((cpu_t1 - cpu_t0) / duration, 3) if duration > 0 else None,
            }
    merged["workers"] = [
        {"shard": str(w.shard), "pid": w.process.pid, "exit": w.exit} for w in workers
    ]
    report.write(directory, merged)
    outcome = Outcome(report=merged, directory=directory, interrupted=interrupted)
    return WorkersOutcome(outcome=outcome, failed=failed)


async def main(
    settings: RunSettings, plan: Plan, stop: asyncio.Event, env: Mapping[str, str]
) -> int:
    """Run the workers, print the merged summary; the exit status (as one run's, see above)."""
    result = await execute(settings, plan, stop, env)
    if result.outcome is not None:
        show(result.outcome)
    if result.failed is not None:
        worker = result.failed
        last = worker.tail[-1] if worker.tail else "(no output)"
        raise (SettingsError if worker.exit == 2 else RunError)(
            f"worker {worker.shard} failed (exit {worker.exit}): {last}"
        )
    if result.outcome is None:
        sys.stderr.write("midm-sim: interrupted before any worker wrote a report\n")
        return EXIT_INTERRUPTED
    return result.outcome.exit_code
