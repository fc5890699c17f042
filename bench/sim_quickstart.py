"""`midm-sim run` as a user runs it: the quickstart scenario (1,000 devices, embedded server).

    python -m bench.sim_quickstart [--devices 1000] [--baseline-devices 100] [--repeat 3]

`midm-sim run scenarios/quickstart.toml --no-progress --report DIR` in a subprocess: its wall
time and exit code, and from its report.json the generator's CPU seconds and the embedded
server's (`generator.cpu_s`, `server.cpu_s`, both over the run window) with their shares of
the run, the send-lag p99 and `saturated`, the check-in p50/p99, the errors (count and
`errors.rate` as the expectations count it), the rollout's convergence (t50/t99, fraction), and
the devices enrolled; the command's whole CPU time too (its process and the server's, set-up
and report included: getrusage of the children).

Baselines in the same command (the machine is shared and noisy; ratios travel better than
seconds): `midm-server` alone started (until it listens) and stopped (SIGTERM to exit),
`--repeat` times, median; and the same scenario with `--baseline-devices` devices (its duration
and timeline are the same, so the ratios show what the extra devices cost). The load average
before and after is in the output. Every subprocess is bounded (SIGTERM, then SIGKILL).
`--keep DIR` keeps the reports and logs.

Target (issue 11): under 60 s on a fresh machine with at least 1,000 devices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BIN, emit, server_process
from bench.sim_capacity import load_average, raise_open_files, run_worker

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "quickstart.toml"
RUN_TIMEOUT_S = 180.0
TARGET_WALL_S = 60.0
TARGET_DEVICES = 1000


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def server_start_stop(db: Path) -> float:
    started = time.perf_counter()
    async with server_process(db):
        pass
    return time.perf_counter() - started


def server_baseline(folder: Path, repeat: int) -> dict[str, Any]:
    times = [asyncio.run(server_start_stop(folder / f"baseline-{i}.sqlite")) for i in range(repeat)]
    return {
        "runs": repeat,
        "start_stop_s_median": round(statistics.median(times), 3),
        "start_stop_s": [round(t, 3) for t in times],
    }


def sim_run(folder: Path, devices: int | None) -> dict[str, Any]:
    """One `midm-sim run` of the quickstart scenario (its own device count unless `devices`)."""
    name = f"quickstart-{devices or 'default'}"
    report_dir = folder / name
    command = [
        str(BIN / "midm-sim"),
        "run",
        str(SCENARIO),
        "--no-progress",
        "--report",
        str(report_dir),
    ]
    if devices is not None:
        command += ["--devices", str(devices)]
    load_before = load_average()
    cpu_before = children_cpu_s()
    code, wall = run_worker(command, folder / f"{name}.log", RUN_TIMEOUT_S)
    result: dict[str, Any] = {
        "command": "midm-sim run scenarios/quickstart.toml --no-progress --report DIR"
        + (f" --devices {devices}" if devices is not None else ""),
        "exit_code": code,
        "wall_s": round(wall, 2),
        "command_cpu_s": round(children_cpu_s() - cpu_before, 2),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    try:
        report = json.loads((report_dir / "report.json").read_text())
    except (OSError, ValueError) as exc:
        log = (folder / f"{name}.log").read_text(errors="replace").splitlines()
        return {**result, "error": f"no report: {exc}", "log_tail": log[-15:]}
    return {**result, **figures(report)}


def figures(report: dict[str, Any]) -> dict[str, Any]:
    generator = report["generator"]
    server = report.get("server") or {}
    requests = report.get("requests", {})
    checkin = requests.get("checkin", {}).get("latency_ms", {})
    total = sum(r.get("count", 0) for r in requests.values())
    errors = sum(sum(r.get("errors", {}).values()) for r in requests.values())
    rollout = report.get("convergence", {}).get("rollout", {})
    return {
        "devices": report["devices"],
        "run_s": report["duration_s"],
        "generator_cpu_s": generator["cpu_s"],
        "generator_cpu_share": generator["cpu_share"],
        "server_cpu_s": server.get("cpu_s"),
        "server_cpu_share": server.get("cpu_share"),
        "generator_rss_peak_mb": generator["rss_mb"],
        "send_lag_ms": generator["send_lag_ms"],
        "saturated": generator["saturated"],
        "checkin_p50_ms": checkin.get("p50"),
        "checkin_p99_ms": checkin.get("p99"),
        "requests": total,
        "errors": errors,
        "error_rate": round(errors / total, 6) if total else 0.0,
        "convergence_rollout": {
            k: rollout.get(k) for k in ("scoped", "applied", "fraction", "t50_s", "t90_s", "t99_s")
        },
        "expectations_failed": [
            e["name"] for e in report.get("expectations", []) if not e["passed"]
        ],
        "warnings": report.get("warnings", []),
    }


def ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(a / b, 2)
    return None


def run(
    devices: int | None, baseline_devices: int, repeat: int, keep: Path | None
) -> dict[str, Any]:
    raise_open_files()
    result: dict[str, Any] = {"bench": "sim_quickstart", "load_average_at_start": load_average()}
    with contextlib.ExitStack() as stack:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            folder = keep
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sim-qs-")))
        server = server_baseline(folder, repeat)
        small = sim_run(folder, baseline_devices)
        main = sim_run(folder, devices)
    n = (main.get("devices") or {}).get("planned", 0)
    m = (small.get("devices") or {}).get("planned", 0)
    extra_cpu = None
    if "generator_cpu_s" in main and "generator_cpu_s" in small and n > m:
        extra_cpu = round((main["generator_cpu_s"] - small["generator_cpu_s"]) * 1000 / (n - m), 3)
    result.update(
        {
            "quickstart": main,
            "baseline_server_alone": server,
            f"baseline_{baseline_devices}_devices": small,
            "ratios": {
                "wall_vs_server_start_stop": ratio(main["wall_s"], server["start_stop_s_median"]),
                f"wall_vs_{baseline_devices}_devices": ratio(main["wall_s"], small["wall_s"]),
                f"generator_cpu_vs_{baseline_devices}_devices": ratio(
                    main.get("generator_cpu_s"), small.get("generator_cpu_s")
                ),
                f"server_cpu_vs_{baseline_devices}_devices": ratio(
                    main.get("server_cpu_s"), small.get("server_cpu_s")
                ),
                "generator_vs_server_cpu": ratio(
                    main.get("generator_cpu_s"), main.get("server_cpu_s")
                ),
            },
            "generator_cpu_ms_per_extra_device": extra_cpu,
            "target": f">= {TARGET_DEVICES} devices in under {TARGET_WALL_S:g} s, exit 0",
            "target_met": main["exit_code"] == 0
            and n >= TARGET_DEVICES
            and main["wall_s"] < TARGET_WALL_S,
            "load_average_at_end": load_average(),
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, help="fleet size (default: the scenario's 1,000)")
    parser.add_argument("--baseline-devices", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="midm-server start/stop runs")
    parser.add_argument("--keep", type=Path, help="keep the reports and logs in this folder")
    args = parser.parse_args()
    if args.devices is not None and args.devices <= args.baseline_devices:
        sys.exit("--devices must be more than --baseline-devices")
    emit(run(args.devices, args.baseline_devices, args.repeat, args.keep))


if __name__ == "__main__":
    main()
