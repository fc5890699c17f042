"""`midm-sim`: the fleet simulator's command line (§8): run, validate, merge.

    midm-sim run [SCENARIO.toml] [--target URL --api-key K --admin-email E --admin-password P]
                 [--allow-remote] [--devices N] [--duration S] [--seed N] [--time-scale X]
                 [--report DIR] [--no-progress] [--metrics-port P [--metrics-host H]]
                 [--workers W | --shard I/N | --shard-from-env] [--run-id ID]
                 [--transport aiohttp|lean]
    midm-sim validate SCENARIO.toml
    midm-sim merge REPORT_DIR... --report OUT [--allow-missing]

Exit status: 0 every expectation held; 1 an expectation failed (each named on stderr); 2 bad
scenario or settings (one line); 3 the run could not be done (target unreachable, embedded
server failed, generator crashed); 130 interrupted (Ctrl-C: the partial report is written).
Errors are one line `midm-sim: error: ...`, never a traceback. Without SCENARIO, `run` takes
`scenarios/quickstart.toml` (next to the installed package, or in the current folder). Target
credentials may also come from MIDM_API_KEY, MIDM_ADMIN_EMAIL and MIDM_ADMIN_PASSWORD (flags
win); this module is the simulator's only reader of the environment.

Shards (simulator/shards.py, simulator/workers.py): `--workers W` runs W shards of the fleet as
processes on this machine against one target (one embedded server without --target) and merges
their reports into --report. `--shard I/N` runs shard I of N (0-based) anywhere; N > 1 needs
--target (all shards share one backend) and a run id common to the shards (--run-id or
MIDM_SIM_RUN_ID); it writes `<--report>/shard-I`. `--shard-from-env` takes I from
JOB_COMPLETION_INDEX (a Kubernetes Indexed Job sets it) and N from MIDM_SIM_SHARDS.
`merge` takes report folders, report.json files or a run's folder of shard-* folders.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from midm_common.cliargs import OneLineParser, integer, port, positive_float, positive_int
from simulator import __version__
from simulator.errors import SettingsError, SimulatorError
from simulator.plan.shards import Shard, ShardError, parse_shard

log = structlog.get_logger("simulator.cli")
COMMANDS = ("run", "validate", "merge")
NOT_YET: tuple[str, ...] = ()  # accepted, refused: "not available yet"
INTERRUPTED = 130
QUICKSTART = "quickstart.toml"


def _shard(text: str) -> Shard:
    try:
        return parse_shard(text)
    except ShardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="midm-sim", description="MiDM fleet simulator.")
    parser.add_argument("--version", action="version", version=f"midm-sim {__version__}")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="error",
        help="the log on stderr (default: error; the agents' info lines are many)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="{" + ",".join(COMMANDS) + "}", parser_class=OneLineParser
    )
    run = commands.add_parser("run", help="run a scenario against a MiDM backend")
    run.add_argument("scenario", nargs="?", type=Path, help="scenario file (default: quickstart)")
    run.add_argument("--target", help="base URL of the backend (default: an embedded server)")
    run.add_argument("--api-key", help="the site's API key for agents (or MIDM_API_KEY)")
    run.add_argument("--admin-email", help="an admin of the site (or MIDM_ADMIN_EMAIL)")
    run.add_argument("--admin-password", help="that admin's password (or MIDM_ADMIN_PASSWORD)")
    run.add_argument(
        "--allow-remote", action="store_true", help="allow a --target that is not loopback"
    )
    run.add_argument("--devices", type=positive_int, help="fleet size (scales every kind)")
    run.add_argument("--duration", type=positive_float, help="scenario seconds to run")
    run.add_argument("--seed", type=integer, help="the plan's seed (default: the scenario's)")
    run.add_argument("--time-scale", type=positive_float, help="run schedules X times faster")
    run.add_argument("--report", type=Path, help="report folder (default ./sim-report/<time>)")
    run.add_argument("--no-progress", action="store_true", help="plain lines, no live display")
    run.add_argument(
        "--transport",
        choices=("aiohttp", "lean"),
        default="aiohttp",
        help="the agents' HTTP client: aiohttp (default) or the lean pool (httptools)",
    )
    run.add_argument(
        "--workers",
        type=positive_int,
        help="run W processes here, each a shard; merge them",
    )
    run.add_argument(
        "--shard", type=_shard, help="I/N: run shard I of N (0-based); writes <--report>/shard-I"
    )
    run.add_argument(
        "--shard-from-env",
        action="store_true",
        help="the shard from JOB_COMPLETION_INDEX (Kubernetes) of MIDM_SIM_SHARDS",
    )
    run.add_argument("--run-id", help="the id every shard of one run shares (or MIDM_SIM_RUN_ID)")
    run.add_argument(
        "--metrics-port",
        type=port,
        metavar="P",
        help="serve live figures for Prometheus on port P (0: a free one; worker i: P+i)",
    )
    run.add_argument(
        "--metrics-host", metavar="H", help="where --metrics-port listens (default 127.0.0.1)"
    )
    validate = commands.add_parser("validate", help="check a scenario and print its plan")
    validate.add_argument("scenario", type=Path)
    validate.add_argument("--devices", type=positive_int)
    validate.add_argument("--duration", type=positive_float)
    validate.add_argument("--seed", type=integer)
    validate.add_argument("--time-scale", type=positive_float)
    merge = commands.add_parser("merge", help="merge the reports of a run's shards")
    merge.add_argument("reports", nargs="+", type=Path)
    merge.add_argument("--report", type=Path, required=True)
    merge.add_argument(
        "--allow-missing", action="store_true", help="merge the shards there are (partial)"
    )
    return parser


def default_scenario() -> Path:
    """scenarios/quickstart.toml: shipped inside the package, next to it (an editable install
    or a checkout), or in the current folder."""
    package = Path(__file__).resolve().parent
    for folder in (package / "scenarios", package.parent / "scenarios", Path("scenarios")):
        candidate = folder / QUICKSTART
        if candidate.is_file():
            return candidate
    raise SettingsError(
        f"no SCENARIO given and scenarios/{QUICKSTART} was not found next to the package or in "
        "the current folder; give a scenario file"
    )


def run_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    """The runner's settings from the command line and the environment (SettingsError)."""
    from simulator.runner import RunSettings, check_target

    for name in NOT_YET:
        if getattr(args, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise SettingsError(f"{flag}: not available yet")
    shard, run_id, workers = shard_settings(args, env)
    api_key = args.api_key or env.get("MIDM_API_KEY") or None
    email = args.admin_email or env.get("MIDM_ADMIN_EMAIL") or None
    password = args.admin_password or env.get("MIDM_ADMIN_PASSWORD") or None
    if args.target is not None:
        check_target(args.target, allow_remote=args.allow_remote)
        missing = [
            flag
            for flag, value in (
                ("--api-key", api_key),
                ("--admin-email", email),
                ("--admin-password", password),
            )
            if not value
        ]
        if missing:
            raise SettingsError(f"--target needs {', '.join(missing)} (or their MIDM_* variables)")
    return RunSettings(
        scenario=args.scenario or default_scenario(),
        target=args.target,
        api_key=api_key,
        admin_email=email,
        admin_password=password,
        devices=args.devices,
        duration_s=args.duration,
        seed=args.seed,
        time_scale=args.time_scale,
        report_dir=args.report,
        progress=not args.no_progress,
        shard=shard,
        run_id=run_id,
        workers=workers,
        allow_remote=args.allow_remote,
        log_level=args.log_level,
        transport=args.transport,
        **_metrics_settings(args),
    )


def _metrics_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--metrics-port/--metrics-host as RunSettings fields (simulator.prometheus: with
    --workers W, worker i serves on P+i)."""
    from simulator import prometheus

    if args.metrics_port is None:
        if args.metrics_host is not None:
            raise SettingsError("--metrics-host needs --metrics-port")
        return {}
    prometheus.check_port(args.metrics_port, workers=args.workers or 1)
    return {
        "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host or prometheus.DEFAULT_HOST,
    }


def shard_settings(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[Shard, str | None, int]:
    """The shard, the run id and the worker count asked for (SettingsError)."""
    from simulator.shards import check_run_id

    shard: Shard = args.shard or Shard()
    if args.shard_from_env:
        if args.shard is not None:
            raise SettingsError("give --shard or --shard-from-env, not both")
        shard = shard_from_env(env)
    workers = args.workers or 1
    if workers > 1 and not shard.whole:
        raise SettingsError(
            f"--workers with --shard {shard}: not supported (run {workers * shard.count} shards "
            "instead, or --workers alone)"
        )
    run_id = args.run_id or env.get("MIDM_SIM_RUN_ID") or None
    if run_id is not None:
        check_run_id(run_id)
    if not shard.whole:
        if args.target is None:
            raise SettingsError(
                f"--shard {shard} needs --target: the shards of one run share one backend "
                "(--workers starts one embedded server for its shards)"
            )
        if run_id is None:
            raise SettingsError(
                f"--shard {shard} needs --run-id (or MIDM_SIM_RUN_ID): the same id for every "
                "shard of one run, so that they meet shard 0 and merge together"
            )
    return shard, run_id, workers


def shard_from_env(env: Mapping[str, str]) -> Shard:
    """Shard JOB_COMPLETION_INDEX of MIDM_SIM_SHARDS (a Kubernetes Indexed Job's pod)."""
    index, count = env.get("JOB_COMPLETION_INDEX"), env.get("MIDM_SIM_SHARDS")
    if not index or not count:
        missing = [
            name
            for name, value in (("JOB_COMPLETION_INDEX", index), ("MIDM_SIM_SHARDS", count))
            if not value
        ]
        raise SettingsError(f"--shard-from-env: {' and '.join(missing)} not set")
    try:
        return parse_shard(f"{index.strip()}/{count.strip()}")
    except ShardError as exc:
        raise SettingsError(
            f"--shard-from-env: JOB_COMPLETION_INDEX/MIDM_SIM_SHARDS {exc}"
        ) from None


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (faster for thousands of agents), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run `main(stop)` on uvloop if available. The first SIGINT/SIGTERM sets `stop` (the run
    ends cleanly and writes its partial report); a second cancels it outright (the embedded
    server is still stopped)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        loop = runner.get_loop()
        stop = asyncio.Event()
        task: asyncio.Task[int] | None = None

        def interrupt() -> None:
            if not stop.is_set():
                sys.stderr.write("midm-sim: stopping (Ctrl-C again to abort)\n")
                stop.set()
            elif task is not None:
                task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt)

        async def wrapper() -> int:
            nonlocal task
            task = asyncio.current_task()
            return await main(stop)

        try:
            return runner.run(wrapper())
        except asyncio.CancelledError:
            sys.stderr.write("midm-sim: aborted\n")
            return INTERRUPTED
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


def command_run(args: argparse.Namespace) -> int:
    from simulator import runner

    settings = run_settings(args, os.environ)
    plan = runner.plan_of(settings)  # bad scenario: exit 2 before anything starts
    if settings.workers > 1:
        from simulator import workers

        env = dict(os.environ)
        return run_async(lambda stop: workers.main(settings, plan, stop, env))
    return run_async(lambda stop: runner.main(settings, plan, stop))


def command_validate(args: argparse.Namespace) -> int:
    from simulator import runner
    from simulator.plan.render import render

    settings = runner.RunSettings(
        scenario=args.scenario,
        devices=args.devices,
        duration_s=args.duration,
        seed=args.seed,
        time_scale=args.time_scale,
    )
    sys.stdout.write(render(runner.plan_of(settings)))
    return 0


def command_merge(args: argparse.Namespace) -> int:
    """Merge shards' reports exactly (simulator.report.merge) and check the expectations again:
    exit 0 or 1 as a run; reports that are not of one run (simulator.shards.check) exit 2."""
    from simulator import report, shards

    try:
        sources = shards.load(args.reports)
        verdict = shards.check(sources, allow_missing=args.allow_missing)
        merged = report.merge(
            [s.report for s in sources], warnings=verdict.warnings, missing=verdict.missing
        )
    except report.ReportError as exc:
        raise SettingsError(f"merge: {exc}") from None
    report.write(args.report, merged)
    sys.stdout.write(f"report: {args.report / report.JSON_NAME}\n")
    failed = [e for e in merged.get("expectations", []) if not e.get("passed")]
    for check in failed:
        sys.stderr.write(
            f"midm-sim: expectation failed: {check['name']}: {check['expr']} "
            f"(observed {check['observed']})\n"
        )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from midm_common.logsetup import configure_logging

    configure_logging(args.log_level)
    commands = {"run": command_run, "validate": command_validate, "merge": command_merge}
    try:
        return commands[args.command](args)
    except SimulatorError as exc:
        sys.stderr.write(f"midm-sim: error: {exc}\n")
        return exc.exit_code
    except Exception as exc:  # one line, not a traceback (exit 3)
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if isinstance(leaf, SimulatorError):
            sys.stderr.write(f"midm-sim: error: {leaf}\n")
            return leaf.exit_code
        sys.stderr.write(f"midm-sim: error: the generator crashed: {type(leaf).__name__}: {leaf}\n")
        log.debug("sim.crashed", exc_info=leaf)  # the traceback with --log-level debug
        return 3


if __name__ == "__main__":
    sys.exit(main())
