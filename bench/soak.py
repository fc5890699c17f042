"""The soak: `midm-sim run scenarios/soak.toml` with the memory of its processes over time.

    python -m bench.soak [--scenario scenarios/soak.toml] [--devices N] [--duration S]
                         [--time-scale X] [--sample-s 5] [--warmup 0.25] [--keep DIR]

Runs the scenario (5,000 devices, 36,000 scenario seconds at 20x: 30 minutes of real time) in a
subprocess and samples, every --sample-s real seconds, the resident set (VmRSS of
/proc/PID/status) and CPU seconds of the worker (the `midm-sim` process) and of the embedded
midm-server (its child; found again at each sample, so a restart_server is followed). After the
run: the curve (at most CURVE_POINTS points), and per process the RSS at the end of the warm-up
(the median of the samples in the tenth of the run after the first --warmup of it), at the end
(the median of the last tenth), the peak, the growth from one to the other in percent and the
least-squares slope after the warm-up (MB per real hour); with the report's headline figures
(exit code, check-ins, errors, saturation, events lost and duplicated). Target (issue 14):
growth after the warm-up under 5 % for both. Times are the fleet's (real seconds since its t0,
from the run's progress lines): set-up before it and the end's checks and report after it are
not in the windows. The warm-up holds the arrivals (50 s real) and the first settings rollout;
medians, not single samples, so a collection in progress at one sample does not decide. The
run is bounded: after --timeout-s it gets SIGTERM (a partial report), SIGKILL after
STOP_GRACE_S.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BIN, emit
from bench.sim_capacity import load_average, raise_open_files

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "soak.toml"
TARGET_GROWTH_PCT = 5.0
CURVE_POINTS = 60
TIMEOUT_S = 1800.0 + 900.0  # the soak's 30 minutes, set-up, the end's checks and report
STOP_GRACE_S = 120.0
TICK = os.sysconf("SC_CLK_TCK")
PROGRESS = re.compile(r"\bt=(\d+)/(\d+)s\b")
TAIL_BYTES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    t_s: float  # real seconds since the command started
    progress: tuple[int, int] | None  # the last progress line then: (t, of) real seconds
    worker_mb: float | None
    server_mb: float | None
    worker_cpu_s: float | None
    server_cpu_s: float | None


def rss_mb(pid: int) -> float | None:
    """VmRSS of `pid` in MB (None: gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, ValueError, IndexError):
        return None


def server_of(pid: int) -> int | None:
    """The embedded midm-server among `pid`'s children."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"midm-server") for part in command):
            return int(child)
    return None


def last_progress(log: Path) -> tuple[int, int] | None:
    """The last `t=N/Ms` of the run's progress lines (real seconds since the fleet's t0)."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - TAIL_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    found = PROGRESS.findall(text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def sample(pid: int, started: float, log: Path) -> Sample:
    server = server_of(pid)
    return Sample(
        t_s=round(time.monotonic() - started, 1),
        progress=last_progress(log),
        worker_mb=rss_mb(pid),
        server_mb=rss_mb(server) if server is not None else None,
        worker_cpu_s=cpu_s(pid),
        server_cpu_s=cpu_s(server) if server is not None else None,
    )


def memory(
    points: Sequence[tuple[float, float]], run_s: float, warmup: float
) -> dict[str, Any] | None:
    """Warm (the tenth after the warm-up), end (the last tenth), peak, growth and slope."""
    if not points or run_s <= 0:
        return None
    tenth = run_s / 10
    warm_from = run_s * warmup
    warm = [mb for t, mb in points if warm_from <= t < warm_from + tenth]
    end = [mb for t, mb in points if t >= run_s - tenth]
    after = [(t, mb) for t, mb in points if t >= warm_from]
    if not warm or not end:
        return None
    warm_mb, end_mb = statistics.median(warm), statistics.median(end)
    slope = None
    if len(after) >= 2:
        ts, ms = [t for t, _ in after], [mb for _, mb in after]
        mean_t, mean_m = statistics.fmean(ts), statistics.fmean(ms)
        var = sum((t - mean_t) ** 2 for t in ts)
        if var > 0:
            per_s = sum((t - mean_t) * (m - mean_m) for t, m in zip(ts, ms, strict=True)) / var
            slope = round(per_s * 3600, 2)
    growth = (end_mb - warm_mb) / warm_mb * 100 if warm_mb else None
    return {
        "warm_mb": round(warm_mb, 1),
        "end_mb": round(end_mb, 1),
        "peak_mb": round(max(mb for _, mb in points), 1),
        "growth_pct": None if growth is None else round(growth, 2),
        "slope_mb_per_h": slope,
        "under_target": growth is not None and growth < TARGET_GROWTH_PCT,
    }


def curve(samples: Sequence[Sample]) -> list[list[float | None]]:
    """[t_s, worker_mb, server_mb] at most CURVE_POINTS of them, evenly over the run."""
    step = max(1, len(samples) // CURVE_POINTS)
    chosen = list(samples[::step])
    if samples and chosen[-1] is not samples[-1]:
        chosen.append(samples[-1])
    return [[s.t_s, _round(s.worker_mb), _round(s.server_mb)] for s in chosen]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    requests = report.get("requests", {})
    total = sum(r.get("count", 0) for r in requests.values())
    errors = sum(sum(r.get("errors", {}).values()) for r in requests.values())
    generator = report.get("generator", {})
    return {
        "devices": report.get("devices"),
        "requests": total,
        "checkins": requests.get("checkin", {}).get("count"),
        "checkin_p99_ms": requests.get("checkin", {}).get("latency_ms", {}).get("p99"),
        "error_rate": round(errors / total, 6) if total else 0.0,
        "events": {k: v for k, v in report.get("events", {}).items() if k != "violations"},
        "saturated": generator.get("saturated"),
        "send_lag_p99_ms": generator.get("send_lag_ms", {}).get("p99"),
        "generator_cpu_s": generator.get("cpu_s"),
        "server_cpu_s": (report.get("server") or {}).get("cpu_s"),
        "expectations_failed": [
            e["name"] for e in report.get("expectations", []) if not e.get("passed")
        ],
        "warnings": report.get("warnings", []),
    }


def fleet_points(
    samples: Sequence[Sample], pick: str
) -> tuple[list[tuple[float, float]], float | None]:
    """(fleet seconds, MB) of the samples taken while the fleet ran, and the run's length.

    The progress lines say the fleet's time every few seconds: the smallest gap between a
    sample's time and the fleet time it saw is the fleet's start (a line is never early)."""
    seen = [s for s in samples if s.progress is not None]
    if not seen:
        return [], None
    offset = min(s.t_s - s.progress[0] for s in seen if s.progress is not None)
    total = float(seen[-1].progress[1]) if seen[-1].progress is not None else None
    points = []
    for s in samples:
        value = getattr(s, pick)
        fleet_t = s.t_s - offset
        if value is not None and 0 <= fleet_t <= (total or 0.0):
            points.append((fleet_t, value))
    return points, total


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    report_dir = folder / "report"
    overrides: list[str] = []
    for flag, value in (
        ("--devices", args.devices),
        ("--duration", args.duration),
        ("--time-scale", args.time_scale),
    ):
        if value is not None:
            overrides += [flag, str(value)]
    command = [
        str(BIN / "midm-sim"), "run", str(args.scenario), "--no-progress",
        "--report", str(report_dir), *overrides,
    ]  # fmt: skip
    log_path = folder / "run.log"
    load_before = load_average()
    samples: list[Sample] = []
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = started + args.timeout_s
        code: int | None = None
        while True:
            try:
                code = process.wait(timeout=args.sample_s)
                break
            except subprocess.TimeoutExpired:
                samples.append(sample(process.pid, started, log_path))
            if time.monotonic() > deadline:
                code = stop(process)
                break
    wall = time.monotonic() - started
    worker_points, run_s = fleet_points(samples, "worker_mb")
    server_points, _ = fleet_points(samples, "server_mb")
    result: dict[str, Any] = {
        "bench": "soak",
        "command": " ".join(["midm-sim", *command[1:]]),
        "exit_code": code,
        "wall_s": round(wall, 1),
        "fleet_run_s": run_s,
        "sample_s": args.sample_s,
        "samples": len(samples),
        "warmup_fraction": args.warmup,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "worker": memory(worker_points, run_s or 0.0, args.warmup),
        "server": memory(server_points, run_s or 0.0, args.warmup),
        "target": f"RSS growth after the warm-up under {TARGET_GROWTH_PCT:g} % (worker and server)",
        "curve_columns": ["t_s", "worker_mb", "server_mb"],
        "curve": curve(samples),
    }
    worker, server = result["worker"], result["server"]
    result["target_met"] = bool(
        worker and server and worker["under_target"] and server["under_target"]
    )
    try:
        report = json.loads((report_dir / "report.json").read_text())
    except (OSError, ValueError) as exc:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        result.update(error=f"no report: {exc}", log_tail=tail)
        return result
    result["report"] = headline(report)
    return result


def stop(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM (the run stops and writes a partial report); SIGKILL it and its server after
    STOP_GRACE_S. Its exit code, or None when it had to be killed."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        server = server_of(process.pid)
        if server is not None:
            os.kill(server, signal.SIGKILL)
        process.kill()
        process.wait()
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    parser.add_argument("--devices", type=int, help="fleet size (default: the scenario's)")
    parser.add_argument("--duration", type=float, help="scenario seconds (default: its own)")
    parser.add_argument("--time-scale", type=float, help="(default: the scenario's)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="real seconds a sample")
    parser.add_argument(
        "--warmup", type=float, default=0.25, help="share of the run before growth counts"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=TIMEOUT_S, help="real seconds before SIGTERM"
    )
    parser.add_argument("--keep", type=Path, help="keep the report and the log in this folder")
    args = parser.parse_args()
    if not 0 <= args.warmup < 0.9:
        parser.error("--warmup must be in [0, 0.9)")
    raise_open_files()
    with ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            folder = args.keep
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-soak-")))
        emit(run(args, folder))


if __name__ == "__main__":
    main()
