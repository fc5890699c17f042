"""Live figures for Prometheus (`midm-sim run --metrics-port P`): every metric `midm_sim_...`.

Theory of operation. `RunCollector` reads the run's Metrics (`Metrics.readings()`) and the
fleet's device counts at each scrape: nothing is counted twice, and what Prometheus sees is what
the report is built from. `serve()` answers GET /metrics (prometheus_client's aiohttp handler:
the text format, or OpenMetrics when asked) on the simulator's own loop, so a scrape reads the
live figures between two callbacks without a lock (prometheus_client's server thread would race
the loop's writes and take the GIL from it all the same). A scrape is bounded work: O(endpoints
x HDR slots up to the largest latency, in C-level sums), never O(devices) or O(run length).

Decisions. Latencies are Prometheus histograms, not summaries: histograms of shards add up in
PromQL (`sum by (le)`) as the report's HDR histograms merge, quantiles never do. The buckets are
fixed (BUCKETS_S) and derived from the HDR histograms at scrape time: a bucket counts the values
whose HDR slot starts at or below its bound (exact below 2.048 ms, within 0.1 % of the bound
above); `_count` is the report's count exactly, `_sum` adds the slots' midpoints (as HDR's mean).
Counters only grow during a run. The server listens on --metrics-host, 127.0.0.1 by default (a
laptop exposes nothing it was not asked to); in a pod give --metrics-host 0.0.0.0, since
Prometheus scrapes the pod's IP. Port 0 takes a free port; the runner prints the URL once. With
--workers W, worker i serves its own shard on P+i (0 stays 0) and the parent serves nothing: it
holds no live figures; Prometheus sums the W targets as it sums a Kubernetes Job's pods.
Before the fleet starts only `midm_sim_run_info` is served; the server stops with the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from simulator import __version__
from simulator.errors import SettingsError
from simulator.metrics import SATURATED_LAG_MS, Metrics
from simulator.plan.model import Plan

log = structlog.get_logger("simulator.prometheus")
PREFIX = "midm_sim_"
PATH = "/metrics"
DEFAULT_HOST = "127.0.0.1"
MAX_PORT = 65535
BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_BOUNDS_US = tuple(round(b * 1_000_000) for b in BUCKETS_S)
_LABELS = tuple(repr(b) for b in BUCKETS_S)  # "0.0001" .. "60.0", as Go and Python clients
_MB = 1024 * 1024
_WORDS: dict[int, Literal["H", "I", "Q"]] = {2: "H", 4: "I", 8: "Q"}  # HDR counts' words


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceCounts:
    """The fleet's agents now: planned, started so far, running (started - running: failed)."""

    planned: int
    started: int
    running: int


# --- HDR histograms as Prometheus buckets (pure) ---------------------------------------------


def slot_counts(histogram: Any) -> memoryview:
    """The HDR histogram's counts array as integers, without a copy (sums over its slices run
    in C; a ctypes slice would build a list first, ten times slower)."""
    view = memoryview(histogram.counts)  # native words, e.g. format "<Q"
    return view.cast("B").cast(_WORDS[view.itemsize])


def cumulative_counts(histogram: Any, bounds_us: Iterable[int] = _BOUNDS_US) -> list[int]:
    """For each bound (microseconds, ascending): how many values were recorded in the HDR slots
    that start at or below it (Prometheus's cumulative `le` counts)."""
    counts = slot_counts(histogram)
    result: list[int] = []
    running = start = 0
    for bound in bounds_us:
        end = histogram.get_counts_array_index(bound) + 1
        running += sum(counts[start:end])
        result.append(running)
        start = end
    return result


def sum_us(histogram: Any) -> int:
    """The recorded values' sum taking each HDR slot's midpoint (HdrHistogram's mean x count),
    microseconds, up to the largest value. Theory: a segment of slots holds the values
    first + j*step; sum(c_j * (first + j*step)) = first*sum(c) + step*sum(j*c_j), and
    sum(j*c_j) is the sum of the suffix sums less sum(c) (itertools.accumulate: C-level)."""
    if histogram.get_total_count() == 0:
        return 0
    counts = slot_counts(histogram)
    half = histogram.sub_bucket_half_count
    unit = histogram.unit_magnitude
    top = min(len(counts), histogram.get_counts_array_index(histogram.max_value) + 1)
    total = 0
    start, end, shift = 0, 2 * half, unit  # the first segment: slots 0 .. 2*half, values i << unit
    while start < top:
        end = min(end, top)
        part = counts[start:end]
        step = 1 << shift
        first = (start - (shift - unit) * half) << shift
        n = sum(part)
        weighted = sum(accumulate(part[::-1])) - n
        total += first * n + step * weighted + (step >> 1) * n
        start, end, shift = end, end + half, shift + 1
    return total


def value_at_percentile(histogram: Any, percentile: float) -> int:
    """hdrh's get_value_at_percentile (the slot where the cumulative count reaches the target,
    its highest equivalent value) found with C-level sums a segment at a time instead of a
    Python step per slot: the same answer, a hundredth of the work."""
    target = histogram.get_target_count_at_percentile(percentile)
    counts = slot_counts(histogram)
    step, seen = histogram.sub_bucket_half_count, 0
    for start in range(0, len(counts), step):
        part = counts[start : start + step]
        total = sum(part)
        if seen + total >= target:
            index = start + bisect_left(list(accumulate(part)), target - seen)
            value = histogram.get_value_from_index(index)
            if percentile:
                return int(histogram.get_highest_equivalent_value(value))
            return int(histogram.get_lowest_equivalent_value(value))
        seen += total
    return 0


def saturated(send_lag: Any, lateness: Any) -> bool:
    """simulator.metrics.is_saturated's rule (the send-lag p99 above SATURATED_LAG_MS; the
    requests' lateness when no probe ran), by value_at_percentile."""
    source = send_lag if send_lag.get_total_count() else lateness
    if source.get_total_count() == 0:
        return False
    return bool(value_at_percentile(source, 99.0) > SATURATED_LAG_MS * 1000)


Buckets = tuple[list[tuple[str, float]], float]  # [(le, cumulative count)], sum in seconds


def buckets_of(histogram: Any) -> Buckets:
    """An HDR histogram of microseconds as Prometheus buckets in seconds, +Inf last."""
    cumulative = cumulative_counts(histogram)
    buckets = [(le, float(n)) for le, n in zip(_LABELS, cumulative, strict=True)]
    buckets.append(("+Inf", float(histogram.get_total_count())))
    return buckets, sum_us(histogram) / 1_000_000


class HistogramReader:
    """buckets_of() that remembers each series' last answer: a histogram whose total count has
    not moved since the last scrape has not changed (values are only ever added)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, ...], tuple[int, Buckets]] = {}

    def family(
        self,
        name: str,
        documentation: str,
        series: Iterable[tuple[tuple[str, ...], Any]],
        *,
        labels: Iterable[str] = (),
    ) -> HistogramMetricFamily:
        """One histogram family from HDR histograms, by label values."""
        family = HistogramMetricFamily(name, documentation, labels=list(labels))
        for values, histogram in series:
            key, total = (name, *values), histogram.get_total_count()
            last = self._last.get(key)
            if last is None or last[0] != total:
                last = self._last[key] = (total, buckets_of(histogram))
            buckets, seconds = last[1]
            family.add_metric(list(values), buckets, seconds)
        return family


# --- the collector ---------------------------------------------------------------------------


class RunCollector:
    """A run's live figures at each scrape, read from its Metrics and the fleet's counts."""

    def __init__(self, metrics: Metrics, devices: Callable[[], DeviceCounts] | None = None) -> None:
        self._metrics = metrics
        self._devices = devices
        self._histograms = HistogramReader()

    def collect(self) -> Iterator[Metric]:
        now = self._metrics.readings()
        yield _gauge("elapsed_seconds", "Real seconds since the run's start (t0).", now.elapsed_s)
        endpoints = sorted(now.endpoints.items())
        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Requests that ended, by endpoint (report.json requests.<endpoint>.count).",
            labels=["endpoint"],
        )
        errors = CounterMetricFamily(
            PREFIX + "request_errors",
            "Failed requests by endpoint and error class (requests.<endpoint>.errors).",
            labels=["endpoint", "class"],
        )
        for key, endpoint in endpoints:
            requests.add_metric([key], endpoint.count)
            for error, n in sorted(endpoint.errors.items()):
                errors.add_metric([key, error], n)
        yield requests
        yield errors
        yield self._histograms.family(
            PREFIX + "request_latency_seconds",
            "Latency from each request's intended send time, by endpoint (HDR-derived buckets).",
            [((key,), endpoint.histogram) for key, endpoint in endpoints],
            labels=["endpoint"],
        )
        yield _counter("requests_cancelled", "Requests cut short by the run's stop.", now.cancelled)
        yield _counter("events_queued", "Events the agents queued.", now.events_queued)
        if self._devices is not None:
            devices = self._devices()
            yield _gauge("devices_planned", "Devices in the plan (this shard's).", devices.planned)
            yield _gauge("devices_started", "Agents started so far.", devices.started)
            yield _gauge(
                "devices_running",
                "Agents running now (while the run goes, started - running have failed).",
                devices.running,
            )
        yield _gauge("websockets_open", "Push channels open now.", now.websockets)
        yield from _convergence(now.profiles)
        yield _counter("generator_cpu_seconds", "The generator's CPU seconds.", now.cpu_s)
        yield _gauge(
            "generator_max_rss_bytes", "The generator's peak resident set size.", now.rss_mb * _MB
        )
        yield self._histograms.family(
            PREFIX + "generator_send_lag_seconds",
            "How late the event loop's probe woke (every 10 ms, corrected for stalls).",
            [((), now.send_lag)],
        )
        yield self._histograms.family(
            PREFIX + "generator_lateness_seconds",
            "How late planned requests went out after their intended time.",
            [((), now.lateness)],
        )
        yield _gauge(
            "generator_saturated",
            "1 when the send-lag p99 is above 10 ms: latencies are not trustworthy.",
            float(saturated(now.send_lag, now.lateness)),
        )


def _convergence(profiles: Iterable[Any]) -> Iterator[Metric]:
    labels = ["profile", "uuid"]
    families = {
        "applied": "Devices that applied the profile.",
        "failed": "Devices that failed the profile and never applied it.",
        "deferred": "Devices that deferred some of the profile at least once.",
        "seen": "Devices that reported any event for the profile.",
    }
    made = {
        key: GaugeMetricFamily(PREFIX + f"convergence_{key}_devices", doc, labels=labels)
        for key, doc in families.items()
    }
    saved = GaugeMetricFamily(
        PREFIX + "convergence_saved_seconds",
        "Scenario seconds from the run's start to the profile's first save.",
        labels=labels,
    )
    for profile in profiles:
        values = [profile.name, profile.uuid]
        for key, family in made.items():
            family.add_metric(values, getattr(profile, key))
        if profile.saved_at_s is not None:
            saved.add_metric(values, profile.saved_at_s)
    yield from made.values()
    yield saved


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


class _Info:
    def __init__(self, labels: Mapping[str, str]) -> None:
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(
            PREFIX + "run",
            "The run: scenario, seed, shard, time scale, version.",
            value=self._labels,
        )


# --- the server ------------------------------------------------------------------------------


def check_port(port: int, *, workers: int = 1) -> None:
    """SettingsError naming --metrics-port unless every worker's port P+i is a port."""
    if not 0 <= port <= MAX_PORT:
        raise SettingsError(f"--metrics-port {port}: not a port (0 to {MAX_PORT}; 0: a free one)")
    if port and port + workers - 1 > MAX_PORT:
        raise SettingsError(
            f"--metrics-port {port}: {workers} workers serve on {port}..{port + workers - 1}, "
            f"past {MAX_PORT}"
        )


def worker_port(port: int, index: int) -> int:
    """The port worker `index` (0-based) of --workers serves on: P+i, or 0 (each its own)."""
    return port + index if port else 0


class Exporter:
    """The listening server: `url` to scrape, `attach()` the run's collector once it exists."""

    def __init__(self, registry: CollectorRegistry, url: str, port: int) -> None:
        self._registry = registry
        self.url = url
        self.port = port

    def attach(self, collector: Collector) -> None:
        self._registry.register(collector)


@contextlib.asynccontextmanager
async def serve(host: str, port: int, *, info: Mapping[str, str]) -> AsyncIterator[Exporter]:
    """Serve GET /metrics on host:port for the duration of the block; SettingsError (exit 2)
    naming the flag when it cannot listen there."""
    check_port(port)
    listener = await _listen(host, port)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Info(info))
    app = web.Application()
    app.router.add_get(PATH, make_aiohttp_handler(registry))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
        site = web.SockSite(runner, listener)
        await site.start()
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        exporter = Exporter(registry, f"http://{shown}:{bound_port}{PATH}", bound_port)
        log.info("prometheus.serving", url=exporter.url)
        yield exporter
    finally:
        await runner.cleanup()
        listener.close()


async def _listen(host: str, port: int) -> socket.socket:
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise SettingsError(f"--metrics-host {host}: {exc.strerror}") from None
    family, _, _, _, address = found[0]
    try:
        return socket.create_server(address[:2], family=family)
    except OSError as exc:
        raise SettingsError(_bind_error(host, port, exc)) from None


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"--metrics-port {port}: {where} is in use; choose another (0 picks a free one)"
    if exc.errno == errno.EACCES:
        return f"--metrics-port {port}: not allowed to listen on {where} (below 1024: privileged)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--metrics-host {host}: not an address of this machine"
    return f"--metrics-port {port}: cannot listen on {where}: {exc.strerror or exc}"


def run_info(plan: Plan, shard: str = "0/1") -> dict[str, str]:
    """midm_sim_run_info's labels: which run this process serves."""
    return {
        "scenario": plan.scenario,
        "seed": str(plan.seed),
        "shard": shard,
        "time_scale": f"{plan.time_scale:g}",
        "version": __version__,
    }
