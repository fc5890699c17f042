"""One simulator worker against the embedded reference server: how many devices it holds.

    python -m bench.sim_capacity [--steps 2500,5000,7500,10000] [--interval 60]
                                 [--time-scale 1] [--budget 600] [--all]

Each step is a fresh `midm-sim run` worker (its own process, so one step's heap cannot lend
memory to the next) on bench/scenarios/capacity.toml with `devices` = N: one kind, push channel
on, the embedded server started with `--checkin-interval 60`, arrivals spread evenly over one
check-in interval (N/60 devices a second, so the steady state's check-ins are even too), then
one full check-in interval more with every device up (the steady window, from 2 s after the
last arrival to the end). At time scale 1 by default: everything is in real seconds.

The worker is `simulator.cli.main(["run", ...])` itself, with one measuring hook: a subclass of
`simulator.metrics.Metrics` (put in `simulator.runner`'s namespace in the child only) that also
keeps the loop probe's send-lag samples and each check-in's latency (from its intended time, as
the report counts it) with their times, samples the process's RSS (/proc/self/statm) once a
second, and notes each garbage collection (gc.callbacks). The runner builds its Metrics at t0,
after the embedded server, the admin set-up and the bulk save, right before the first agent:
RSS then is "RSS at 0 devices", and RSS per device = (RSS at the end of the steady window -
that) / N.

Per step: devices enrolled and push channels open at the end; the generator's send-lag p99 as
the report gives it (the whole probe: `saturated` above 10 ms), and from the hook per window:
`ramp` (the arrivals), `steady`, `run` (both, to the planned end) and `stop` (the agents
stopping, after the planned end); the same time-weighted (`send_lag_time_weighted_ms`: the
probe wakes every 10 ms, so a stall of 800 ms is one sample in the report's histogram; here it
also stands for the 79 wake-ups it swallowed, as HDR's record_corrected_value does); check-in
latency per window; RSS and RSS per device; CPU of the generator and of the embedded server;
GC pauses (and how many loop stalls and slow check-ins they account for); the load average
before and after. A step is *held* when every device is enrolled and on its push channel,
`errors.rate` is < 0.1 % and the report's send-lag p99 is < 10 ms (`held_steady`: the steady
window's; `held_time_weighted`: the run's time-weighted p99); headline: the most devices held
and the RSS per device there. A step held by none of the three ends the series (larger fleets
would not be held either) unless `--all`; a step that would not fit in what is left of
`--budget` seconds is skipped. `--keep DIR` keeps each step's scenario, report, probe figures
and worker log.

Target (issue 11): 5,000 devices under 40 KB each.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import gc
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import emit

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "scenarios" / "capacity.toml"
DEFAULT_STEPS = "2500,5000,7500,10000"
STEADY_MARGIN_S = 2.0  # after the last arrival: its enrollment is done
END_MARGIN_S = 1.0  # the steady window runs one interval + this
OVERHEAD_S = 15.0  # a step's start and end (server, bulk save, settle, consistency, report)
STOP_GRACE_S = 60.0  # from SIGTERM (partial report) to SIGKILL
TARGET_DEVICES = 5000
TARGET_KB = 40.0
HELD_LAG_MS = 10.0
HELD_ERROR_RATE = 0.001
GC_PAUSES_KEPT = 40
PROBE_MS = 10.0  # simulator.metrics.PROBE_INTERVAL_S: the loop probe's period
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the child: one `midm-sim run` with the measuring hook -------------------------------------


def rss_kb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE // 1024


class Probe:
    """What the hook keeps: (t, value) samples in real seconds since t0."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.rss0 = 0
        self.lag_t = array.array("d")
        self.lag_ms = array.array("d")
        self.checkin_t = array.array("d")
        self.checkin_ms = array.array("d")
        self.rss_t = array.array("d")
        self.rss = array.array("q")
        self.gc_t = array.array("d")
        self.gc_gen = array.array("b")
        self.gc_ms = array.array("d")
        self._gc_started = 0.0
        self._next_rss = 0.0
        self.objects_at_end: int | None = None

    def at_end(self) -> None:
        """The run has just stopped (its agents still exist): the objects the collector tracks
        (outside the measured window: counting them takes a while)."""
        if self.objects_at_end is None:
            self.objects_at_end = len(gc.get_objects())

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.rss0 = rss_kb()
        self._sample_rss(0.0)

    def now(self) -> float:
        return time.monotonic() - (self.t0 or 0.0)

    def _sample_rss(self, t: float) -> None:
        self.rss_t.append(t)
        self.rss.append(rss_kb())
        self._next_rss = t + 1.0

    def lag(self, seconds: float) -> None:
        t = self.now()
        self.lag_t.append(t)
        self.lag_ms.append(seconds * 1000)
        if t >= self._next_rss:
            self._sample_rss(t)

    def checkin(self, latency_s: float) -> None:
        self.checkin_t.append(self.now())
        self.checkin_ms.append(latency_s * 1000)

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if self.t0 is None:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        self.gc_t.append(self.now())
        self.gc_gen.append(info["generation"])
        self.gc_ms.append((time.perf_counter() - self._gc_started) * 1000)

    def summary(self, arrive_end: float, steady_from: float, run_end: float) -> dict[str, Any]:
        """Figures per window (real seconds since t0): `ramp` the arrivals, `steady` from just
        after the last arrival to the run's planned end, `run` both, `stop` (send lag only)
        from the planned end until the probe stopped (the agents stopping)."""
        last = self.lag_t[-1] if self.lag_t else 0.0
        end = min(run_end, last)
        windows = {"run": (0.0, end), "ramp": (0.0, arrive_end), "steady": (steady_from, end)}
        lag_windows = {**windows, "stop": (end, last)}
        in_steady = [kb for t, kb in zip(self.rss_t, self.rss, strict=True) if t <= end]
        return {
            "run_s": round(end, 1),
            "rss_t0_kb": self.rss0,
            "rss_end_kb": in_steady[-1] if in_steady else None,
            "rss_max_kb": max(in_steady, default=None),
            "rss_series_kb": [
                [round(t), kb]
                for i, (t, kb) in enumerate(zip(self.rss_t, self.rss, strict=True))
                if i % 10 == 0
            ],
            "send_lag_ms": {
                name: distribution(self.lag_t, self.lag_ms, *span)
                for name, span in lag_windows.items()
            },
            "send_lag_time_weighted_ms": {
                name: distribution(*corrected(self.lag_t, self.lag_ms), *span)
                for name, span in lag_windows.items()
            },
            "checkin_ms": {
                name: distribution(self.checkin_t, self.checkin_ms, *span)
                for name, span in windows.items()
            },
            "gc": self.gc_summary(end),
        }

    def gc_summary(self, end: float) -> dict[str, Any]:
        """The collections until `end`: per generation, the longest, and how many of the
        loop's stalls and of the slow check-ins they account for."""
        collections = [
            (t, g, ms)
            for t, g, ms in zip(self.gc_t, self.gc_gen, self.gc_ms, strict=True)
            if t <= end
        ]
        per_gen: dict[str, Any] = {}
        for gen in (0, 1, 2):
            pauses = [ms for _, g, ms in collections if g == gen]
            per_gen[f"gen{gen}"] = {
                "count": len(pauses),
                "total_ms": round(sum(pauses), 1),
                "max_ms": round(max(pauses, default=0.0), 1),
            }
        long = sorted((c for c in collections if c[2] >= HELD_LAG_MS), key=lambda c: -c[2])
        # loop stalls (probe samples >= 10 ms late) that came within 50 ms after such a pause
        stalls = [t for t, ms in zip(self.lag_t, self.lag_ms, strict=True) if ms >= 10 and t <= end]
        gc_ends = [t for t, _, _ in long]
        explained = sum(1 for t in stalls if any(0 <= t - e <= 0.05 for e in gc_ends))
        # check-ins that took >= 100 ms, and of them those in flight during a pause >= 100 ms
        spans = [(t - ms / 1000, t) for t, _, ms in long if ms >= 100]
        slow = [
            (t - ms / 1000, t)
            for t, ms in zip(self.checkin_t, self.checkin_ms, strict=True)
            if ms >= 100 and t <= end
        ]
        overlapping = sum(1 for a, b in slow if any(a < p1 and p0 < b for p0, p1 in spans))
        return {
            **per_gen,
            "pauses_ge_10ms": [[round(t, 1), g, round(ms, 1)] for t, g, ms in long][
                :GC_PAUSES_KEPT
            ],
            "lag_samples_ge_10ms": len(stalls),
            "of_them_right_after_a_gc_ge_10ms": explained,
            "checkins_ge_100ms": len(slow),
            "of_them_in_flight_during_a_gc_ge_100ms": overlapping,
            "tracked_objects_at_end": self.objects_at_end,
        }


def corrected(times: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The probe's samples with the ones a stall swallowed put back (HDR's
    record_corrected_value at the probe's interval): a wake-up 800 ms late stands for the
    80 samples due meanwhile (790, 780, ... ms late), so a stall weighs as the time it took."""
    out_t: list[float] = []
    out_v: list[float] = []
    for t, v in zip(times, values, strict=True):
        out_t.append(t)
        out_v.append(v)
        missed = v - PROBE_MS
        while missed >= PROBE_MS:
            out_t.append(t)
            out_v.append(missed)
            missed -= PROBE_MS
    return out_t, out_v


def distribution(
    times: Sequence[float], values: Sequence[float], start: float, end: float
) -> dict[str, Any]:
    chosen = sorted(v for t, v in zip(times, values, strict=True) if start <= t <= end)
    n = len(chosen)

    def pct(p: float) -> float | None:
        return round(chosen[min(n - 1, int(p * n))], 3) if n else None

    return {
        "window_s": [round(start, 1), round(end, 1)],
        "samples": n,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "max": round(chosen[-1], 3) if n else None,
    }


def child(sidecar: Path, windows: Sequence[float], argv: list[str]) -> int:
    """`midm-sim <argv>` in this process with the hook; the probe's summary to `sidecar`."""
    from agent.transport.base import Exchange
    from simulator import cli, runner
    from simulator.metrics import Metrics, MetricsSnapshot

    probe = Probe()

    class ProbedMetrics(Metrics):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._bench_scale = kwargs.get("time_scale", 1.0)
            probe.start()

        def record_send_lag(self, seconds: float, *, interval_s: float | None = None) -> None:
            super().record_send_lag(seconds, interval_s=interval_s)
            probe.lag(seconds)

        def snapshot(self) -> MetricsSnapshot:
            probe.at_end()
            return super().snapshot()

        def observe(self, exchange: Exchange) -> None:
            super().observe(exchange)
            answered = exchange.status != 0 or exchange.error is not None
            if exchange.name == "checkin" and answered:  # as Metrics.observe counts it
                late = max(0.0, exchange.started - exchange.intended)
                probe.checkin((late + exchange.duration) / self._bench_scale)

    setattr(runner, "Metrics", ProbedMetrics)  # noqa: B010 - the child's own copy of the runner
    gc.callbacks.append(probe.on_gc)
    code = cli.main(argv)
    sidecar.write_text(json.dumps(probe.summary(*windows)))
    return code


# -- the parent: steps ---------------------------------------------------------------------------


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def raise_open_files() -> dict[str, int]:
    """The soft RLIMIT_NOFILE up to the hard one (the worker and its server inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return {"soft": soft, "hard": hard}


def step_scenario(folder: Path, devices: int, interval: float, arrive_s: float) -> Path:
    """The template with this step's fleet size, arrival rate and duration."""
    text = TEMPLATE.read_text()
    replacements = {
        "devices": str(devices),
        "checkin_interval_s": f"{interval:g}",
        "rate": f"{devices / arrive_s:.6f}",
        "duration_s": f"{arrive_s + STEADY_MARGIN_S + interval + END_MARGIN_S:g}",
    }
    for key, value in replacements.items():
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        if count != 1:
            raise RuntimeError(f"{TEMPLATE}: no `{key} = ` line to set")
    path = folder / f"capacity-{devices}.toml"
    path.write_text(text)
    return path


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def run_worker(command: list[str], log: Path, timeout_s: float) -> tuple[int | None, float]:
    """The worker's exit code (None: it had to be killed) and wall time. Past `timeout_s` it
    gets SIGTERM (it stops and writes a partial report), SIGKILL (it and its server) if that
    does not end it."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                for pid in children_of(process.pid):  # the embedded server
                    os.kill(pid, signal.SIGKILL)
                process.kill()
                process.wait()
            code = None
    return code, time.perf_counter() - started


def step(folder: Path, devices: int, args: argparse.Namespace) -> dict[str, Any]:
    interval, scale = args.interval, args.time_scale
    arrive_s = interval  # one check-in interval: the steady state's check-ins are even
    scenario = step_scenario(folder, devices, interval, arrive_s)
    report_dir = folder / f"report-{devices}"
    sidecar = folder / f"probe-{devices}.json"
    log = folder / f"worker-{devices}.log"
    duration = arrive_s + STEADY_MARGIN_S + interval + END_MARGIN_S
    arrive_end = arrive_s / scale
    steady_from = (arrive_s + STEADY_MARGIN_S) / scale
    command = [
        sys.executable,
        "-m",
        "bench.sim_capacity",
        "--child",
        str(sidecar),
        "--windows",
        f"{arrive_end},{steady_from},{duration / scale}",
        "--",
        "run",
        str(scenario),
        "--no-progress",
        "--report",
        str(report_dir),
        "--time-scale",
        str(scale),
    ]
    load_before = load_average()
    code, wall = run_worker(command, log, duration / scale + OVERHEAD_S * 4 + devices / 100)
    result: dict[str, Any] = {
        "devices": devices,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    try:
        report = json.loads((report_dir / "report.json").read_text())
        probe = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        result["error"] = f"no report: {exc}"
        result["log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
        result["held"] = result["held_steady"] = False
        return result
    result.update(figures(report, probe, devices))
    return result


def figures(report: dict[str, Any], probe: dict[str, Any], devices: int) -> dict[str, Any]:
    generator = report["generator"]
    server = report.get("server") or {}
    timeline = report.get("timeline") or []
    requests = report.get("requests", {})
    count = sum(r.get("count", 0) for r in requests.values())  # as `errors.rate` counts
    errors = sum(sum(r.get("errors", {}).values()) for r in requests.values())
    error_rate = errors / count if count else 0.0
    ws_end = timeline[-1]["websockets"] if timeline else 0
    enrolled = report["devices"].get("enrolled", 0)
    lag, weighted = probe["send_lag_ms"], probe["send_lag_time_weighted_ms"]
    rss0, rss_end = probe["rss_t0_kb"], probe["rss_end_kb"]
    per_device = (rss_end - rss0) / devices if rss_end is not None else None
    up = enrolled == devices and ws_end == devices and error_rate < HELD_ERROR_RATE
    run_p99 = generator["send_lag_ms"]["p99"]
    steady_p99 = lag["steady"]["p99"]
    return {
        "run_s": report["duration_s"],
        "devices_enrolled": enrolled,
        "push_channels_open_at_end": ws_end,
        "requests": count,
        "errors": errors,
        "error_rate": round(error_rate, 6),
        "send_lag_p99_ms": run_p99,
        "send_lag_max_ms": generator["send_lag_ms"]["max"],
        "saturated": generator["saturated"],
        "send_lag_ms": lag,
        "send_lag_time_weighted_ms": weighted,
        "checkin_p99_ms": requests.get("checkin", {}).get("latency_ms", {}).get("p99"),
        "checkin_ms": probe["checkin_ms"],
        "start_lag_ms": (report.get("fleet") or {}).get("start_lag_ms"),
        "rss_t0_mb": round(rss0 / 1024, 1),
        "rss_end_mb": round(rss_end / 1024, 1) if rss_end is not None else None,
        "rss_peak_mb": generator["rss_mb"],
        "rss_per_device_kb": round(per_device, 1) if per_device is not None else None,
        "rss_series_kb": probe["rss_series_kb"],
        "generator_cpu_s": generator["cpu_s"],
        "generator_cpu_share": generator["cpu_share"],
        "server_cpu_s": server.get("cpu_s"),
        "server_cpu_share": server.get("cpu_share"),
        "gc": probe["gc"],
        "consistency_mismatches": len(report.get("consistency", {}).get("mismatches", [])),
        "held": up and run_p99 is not None and run_p99 < HELD_LAG_MS,
        "held_steady": up and steady_p99 is not None and steady_p99 < HELD_LAG_MS,
        "held_time_weighted": up and (weighted["run"]["p99"] or 0.0) < HELD_LAG_MS,
    }


def headline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    def best(key: str) -> dict[str, Any] | None:
        held = [s for s in steps if s.get(key)]
        return max(held, key=lambda s: s["devices"]) if held else None

    run, steady, weighted = best("held"), best("held_steady"), best("held_time_weighted")
    return {
        "most_devices_held": run["devices"] if run else 0,
        "rss_per_device_kb_there": run["rss_per_device_kb"] if run else None,
        "most_devices_held_steady_window": steady["devices"] if steady else 0,
        "rss_per_device_kb_there_steady": steady["rss_per_device_kb"] if steady else None,
        "most_devices_held_time_weighted_lag": weighted["devices"] if weighted else 0,
        "target": f"{TARGET_DEVICES} devices under {TARGET_KB:g} KB each",
        "target_met": bool(
            run
            and run["devices"] >= TARGET_DEVICES
            and any(
                s.get("held")
                and s["devices"] >= TARGET_DEVICES
                and (s["rss_per_device_kb"] or 1e9) < TARGET_KB
                for s in steps
            )
        ),
    }


def parent(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted({int(x) for x in args.steps.split(",") if x.strip()})
    if not sizes or sizes[0] <= 0:
        raise SystemExit("--steps: positive fleet sizes, e.g. 1000,2000,5000")
    limits = raise_open_files()
    load_at_start = load_average()
    began = time.perf_counter()
    steps: list[dict[str, Any]] = []
    overhead = OVERHEAD_S
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            scratch = str(args.keep)
        else:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sim-capacity-"))
        for size in sizes:
            duration = (args.interval * 2 + STEADY_MARGIN_S + END_MARGIN_S) / args.time_scale
            estimate = duration + overhead * max(
                1.0, size / (steps[-1]["devices"] if steps else size)
            )
            left = args.budget - (time.perf_counter() - began)
            if estimate > left:
                steps.append(
                    {"devices": size, "skipped": f"needs ~{estimate:.0f} s, {left:.0f} s left"}
                )
                continue
            result = step(Path(scratch), size, args)
            steps.append(result)
            overhead = max(OVERHEAD_S / 3, result["wall_s"] - duration)
            print(
                f"sim_capacity: {size} devices: held {result.get('held')}, steady "
                f"{result.get('held_steady')}, lag p99 {result.get('send_lag_p99_ms')} ms, "
                f"rss/device {result.get('rss_per_device_kb')} KB, {result['wall_s']} s",
                file=sys.stderr,
            )
            held = ("held", "held_steady", "held_time_weighted")
            if not any(result.get(key) for key in held) and not args.all:
                break
    done = [s for s in steps if "skipped" not in s]
    return {
        "bench": "sim_capacity",
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_at_start},
        "settings": {
            "checkin_interval_s": args.interval,
            "arrival_s": args.interval,
            "steady_window_s": args.interval + END_MARGIN_S,
            "time_scale": args.time_scale,
            "push": True,
            "open_files": limits,
            "budget_s": args.budget,
        },
        "wall_s": round(time.perf_counter() - began, 1),
        "steps": steps,
        **headline(done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="fleet sizes, comma-separated")
    parser.add_argument("--interval", type=float, default=60.0, help="check-in interval (s)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="midm-sim --time-scale")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for all steps")
    parser.add_argument("--all", action="store_true", help="go on after a step not held")
    parser.add_argument("--keep", type=Path, help="keep each step's report and log in this folder")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--windows", help=argparse.SUPPRESS)  # arrive end, steady from, end
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        sys.exit(child(args.child, [float(x) for x in args.windows.split(",")], args.rest))
    emit(parent(args))


if __name__ == "__main__":
    main()
