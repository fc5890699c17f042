"""`midm-sim run --metrics-port`: what Prometheus scrapes are the report's own figures.

HDR histograms become cumulative `le` buckets and sums exactly as their slots say; a collector
over a live Metrics serves every figure over a real socket (counts and errors equal to the
snapshot the report is built from, counters that only grow); a run serves on a free port, says
where once, and stops serving with the run; its live figures equal its report.json; with
--workers each worker serves its own shard; a port in use or out of range is exit 2 in one line
naming the flag."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from agent.transport.base import Exchange
from simulator import consistency, figures, prometheus, runner
from simulator.errors import SettingsError
from simulator.metrics import Metrics, Usage, is_saturated

# -- helpers -------------------------------------------------------------------------------


async def scrape(url: str) -> dict[str, Metric]:
    """GET the exposition over a real socket and parse it as Prometheus does."""
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = await answer.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Mapping[str, Metric], sample: str, **labels: str) -> float:
    """The one sample named `sample` whose labels include `labels`."""
    found = [
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, found)
    return found[0]


def series(families: Mapping[str, Metric], family: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in families[family].samples}


def slots(histogram: Any) -> Iterator[tuple[int, int, int]]:
    """(slot start, slot midpoint, count) of every recorded HDR slot, by hdrh's own iterator."""
    for step in histogram.get_recorded_iterator():
        low = histogram.get_lowest_equivalent_value(step.value_iterated_to)
        high = histogram.get_highest_equivalent_value(step.value_iterated_to)
        yield low, low + (high - low + 1) // 2, step.count_added_in_this_iter_step


def expected_buckets(histogram: Any) -> tuple[list[int], int]:
    """Cumulative counts at each bound and the sum (microseconds), the slow and obvious way."""
    recorded = list(slots(histogram))
    cumulative = [sum(n for low, _, n in recorded if low <= b) for b in bounds_us()]
    return cumulative, sum(mid * n for _, mid, n in recorded)


def bounds_us() -> list[int]:
    return [round(b * 1_000_000) for b in prometheus.BUCKETS_S]


def assert_histogram(families: Mapping[str, Metric], name: str, hdr: str, **labels: str) -> None:
    """The scraped histogram is the HDR encoding's: every bucket, +Inf, _count and _sum."""
    histogram = figures.decode(hdr)
    cumulative, total_us = expected_buckets(histogram)
    for bound, n in zip(prometheus.BUCKETS_S, cumulative, strict=True):
        assert value(families, name + "_bucket", le=str(bound), **labels) == n, bound
    count = histogram.get_total_count()
    assert value(families, name + "_bucket", le="+Inf", **labels) == count
    assert value(families, name + "_count", **labels) == count
    assert value(families, name + "_sum", **labels) == pytest.approx(total_us / 1e6)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def exchange(name: str, seconds: float, status: int = 200, error: str | None = None) -> Exchange:
    return Exchange(
        name=name, intended=0.0, started=0.0, duration=seconds, status=status, error=error
    )


def feed(metrics: Metrics, rng: random.Random, n: int) -> None:
    """Device and admin exchanges of many latencies and every way of failing."""
    for _ in range(n):
        metrics.observe(exchange("checkin", rng.lognormvariate(-4, 1.5)))
    metrics.observe(exchange("checkin", 0.3, status=503))
    metrics.observe(exchange("checkin", 10.0, status=0, error="timeout"))
    metrics.observe(exchange("register", 0.002, status=401))
    metrics.observe(exchange("register", 0.0025))
    metrics.observe(exchange("push", 0.004))
    metrics.observe(exchange("push", 0.001, status=0, error="ConnectionResetError"))
    metrics.observe(exchange("download", 75.0))  # past the last bound: only +Inf
    metrics.observe(exchange("admin:profile/save", 0.02))
    metrics.observe(exchange("checkin", 0.0, status=0))  # cancelled by the stop
    for lag in (0.0001, 0.002, 0.05):
        metrics.record_send_lag(lag, interval_s=0.01)


def profile_event(uuid: str, status: str, kind: str = "profile") -> dict[str, str]:
    return {"profileUuid": uuid, "kind": kind, "status": status}


# -- HDR histograms as buckets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded_us", "cumulative_at"),
    [
        ([100], {100: 1, 99: 0}),  # below 2.048 ms every microsecond has its own slot: exact
        ([1000, 1001], {1000: 1, 2500: 2}),
        ([2500, 2501], {2500: 2}),  # one slot of two values: it starts at the bound
        ([2502], {2500: 0, 5000: 1}),
        ([25_000], {25_000: 1}),  # slot 24,992..25,007 starts below the bound
        ([60_000_000, 61_000_000], {60_000_000: 1}),
        ([3_600_000_000], {60_000_000: 0}),
    ],
)
def test_buckets_count_the_hdr_slots_that_start_at_or_below_each_bound(
    recorded_us: list[int], cumulative_at: dict[int, int]
) -> None:
    histogram = figures.new_histogram()
    for us in recorded_us:
        histogram.record_value(us)
    bounds = sorted(cumulative_at)
    assert prometheus.cumulative_counts(histogram, bounds) == [cumulative_at[b] for b in bounds]
    assert prometheus.cumulative_counts(histogram)[-1] <= len(recorded_us)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=figures.HIGHEST_US), max_size=300))
def test_buckets_and_sum_equal_the_slow_count_of_every_slot(recorded_us: list[int]) -> None:
    """For any values: the cumulative counts and the midpoint sum are hdrh's own slots', on
    the live histogram and on its decoded encoding alike (as the report stores it)."""
    histogram = figures.new_histogram()
    for us in recorded_us:
        histogram.record_value(us)
    cumulative, total_us = expected_buckets(histogram)
    decoded = figures.decode(figures.encode(histogram))
    for h in (histogram, decoded):
        assert prometheus.cumulative_counts(h) == cumulative
        assert prometheus.sum_us(h) == total_us
    buckets, seconds = prometheus.buckets_of(histogram)
    assert buckets[-1] == ("+Inf", float(len(recorded_us)))
    assert seconds == total_us / 1_000_000


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=figures.HIGHEST_US), max_size=300),
    st.lists(st.integers(min_value=1, max_value=100_000), max_size=50),
    st.sampled_from([0.0, 1.0, 50.0, 99.0, 99.9, 100.0]),
)
def test_the_fast_percentile_and_saturation_are_hdrhs_own(
    lag_us: list[int], late_us: list[int], percentile: float
) -> None:
    """value_at_percentile answers what hdrh's get_value_at_percentile answers, and the scrape's
    saturated flag is simulator.metrics.is_saturated's (the report's) for any samples."""
    send_lag, lateness = figures.new_histogram(), figures.new_histogram()
    for histogram, values in ((send_lag, lag_us), (lateness, late_us)):
        for us in values:
            histogram.record_value(us)
    for histogram in (send_lag, lateness):
        expected = histogram.get_value_at_percentile(percentile)
        assert prometheus.value_at_percentile(histogram, percentile) == expected
    assert prometheus.saturated(send_lag, lateness) == is_saturated(send_lag, lateness)


def test_the_sum_is_hdrhistograms_mean_times_the_count() -> None:
    rng = random.Random(3)
    histogram = figures.new_histogram()
    for _ in range(5000):
        figures.record_us(histogram, rng.lognormvariate(-5, 2))
    mean = histogram.get_mean_value()
    assert prometheus.sum_us(histogram) == pytest.approx(mean * histogram.get_total_count())


# -- the collector over a socket -----------------------------------------------------------


async def test_a_scrape_serves_the_figures_the_report_is_built_from() -> None:
    """Every endpoint's count, errors by class and latency histogram, the generator's send lag,
    convergence and devices, scraped over 127.0.0.1 and parsed, equal the Metrics' snapshot
    (what report.json is built from); the run's info labels say which run it is."""
    clock = Clock()
    metrics = Metrics(clock, usage=lambda: Usage(cpu_s=3.0, rss_mb=48.0))
    feed(metrics, random.Random(1), 400)
    metrics.profile_saved("rollout", "u-1", at_s=2.0)
    for serial, status in (("a", "applied"), ("b", "failed"), ("c", "deferred"), ("c", "applied")):
        metrics.device_event(serial, profile_event("u-1", status))
    metrics.device_event("d", profile_event("u-2", "failed"))  # a profile saved by nobody here
    metrics.websockets(7)
    clock.now += 3.5
    info = {"scenario": "s", "seed": "5", "shard": "0/1", "time_scale": "1", "version": "v"}
    counts = prometheus.DeviceCounts(planned=10, started=8, running=7)
    async with prometheus.serve("127.0.0.1", 0, info=info) as exporter:
        exporter.attach(prometheus.RunCollector(metrics, lambda: counts))
        families = await scrape(exporter.url)
    snapshot = metrics.snapshot()

    assert value(families, "midm_sim_run_info") == 1
    assert families["midm_sim_run_info"].samples[0].labels == info
    assert value(families, "midm_sim_elapsed_seconds") == 3.5
    assert series(families, "midm_sim_requests", "endpoint") == {
        key: e.count for key, e in snapshot.requests.items()
    }
    errors = {(s.labels["endpoint"], s.labels["class"]): s.value
              for s in families["midm_sim_request_errors"].samples}  # fmt: skip
    assert errors == {
        (key, error): n for key, e in snapshot.requests.items() for error, n in e.errors.items()
    }
    assert errors[("checkin", "timeout")] == 1
    for key, endpoint in snapshot.requests.items():
        assert_histogram(families, "midm_sim_request_latency_seconds", endpoint.hdr, endpoint=key)
    assert (
        value(families, "midm_sim_request_latency_seconds_bucket", endpoint="file", le="60.0") == 0
    )
    assert value(families, "midm_sim_requests_cancelled_total") == snapshot.cancelled == 1
    assert value(families, "midm_sim_generator_cpu_seconds_total") == snapshot.generator.cpu_s
    assert value(families, "midm_sim_generator_max_rss_bytes") == 48 * 1024 * 1024
    assert_histogram(
        families, "midm_sim_generator_send_lag_seconds", snapshot.generator.send_lag_hdr
    )
    assert value(families, "midm_sim_generator_saturated") == float(snapshot.generator.saturated)
    assert value(families, "midm_sim_websockets_open") == 7
    assert value(families, "midm_sim_devices_planned") == 10
    assert value(families, "midm_sim_devices_running") == 7
    assert value(families, "midm_sim_events_queued_total") == snapshot.events_queued == 5
    progress = snapshot.profiles["u-1"]
    rollout = {"profile": "rollout", "uuid": "u-1"}
    assert value(families, "midm_sim_convergence_applied_devices", **rollout) == 2
    assert value(families, "midm_sim_convergence_failed_devices", **rollout) == len(
        set(progress.failed) - set(progress.applied)
    )
    assert value(families, "midm_sim_convergence_deferred_devices", **rollout) == 1
    assert value(families, "midm_sim_convergence_seen_devices", **rollout) == 3
    assert value(families, "midm_sim_convergence_saved_seconds", **rollout) == 2.0
    assert value(families, "midm_sim_convergence_failed_devices", profile="u-2", uuid="u-2") == 1


async def test_counters_only_grow_from_scrape_to_scrape() -> None:
    """A second scrape after more traffic: every counter, bucket and count is at least what it
    was, and the new requests are there (a histogram that moved is read again)."""
    metrics = Metrics(Clock(), usage=lambda: Usage(cpu_s=1.0, rss_mb=1.0))
    rng = random.Random(2)
    feed(metrics, rng, 50)
    async with prometheus.serve("127.0.0.1", 0, info={}) as exporter:
        exporter.attach(prometheus.RunCollector(metrics))
        before = await scrape(exporter.url)
        feed(metrics, rng, 50)
        after = await scrape(exporter.url)
    monotonic = [name for name, f in after.items() if f.type in ("counter", "histogram")]
    assert "midm_sim_requests" in monotonic
    for name in monotonic:
        old = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in before[name].samples}
        for s in after[name].samples:
            assert s.value >= old.get((s.name, tuple(sorted(s.labels.items()))), 0), s
    assert value(after, "midm_sim_requests_total", endpoint="checkin") == 2 * (50 + 2)
    assert value(after, "midm_sim_request_latency_seconds_count", endpoint="checkin") == 104
    assert "midm_sim_devices_planned" not in after  # no fleet was given


async def test_before_the_fleet_only_the_run_is_named_and_the_port_closes_after() -> None:
    """Until the runner attaches its collector (set-up, embedded server) a scrape names the run
    only; when the block ends the port refuses connections."""
    async with prometheus.serve("127.0.0.1", 0, info={"scenario": "s"}) as exporter:
        families = await scrape(exporter.url)
        port = exporter.port
    assert set(families) == {"midm_sim_run_info"}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_a_port_in_use_is_a_settings_error_naming_the_flag() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SettingsError, match=f"--metrics-port {port}: .* is in use"):
            async with prometheus.serve("127.0.0.1", port, info={}):
                pass


def test_ports_of_workers() -> None:
    """With --workers W worker i serves on P+i (0: each its own free port); P+W-1 must be a
    port; anything outside 0..65535 is refused naming --metrics-port."""
    assert [prometheus.worker_port(9100, i) for i in range(3)] == [9100, 9101, 9102]
    assert prometheus.worker_port(0, 2) == 0
    prometheus.check_port(65534, workers=2)
    prometheus.check_port(0, workers=64)
    for port, workers in ((65535, 2), (-1, 1), (65536, 1)):
        with pytest.raises(SettingsError, match="--metrics-port"):
            prometheus.check_port(port, workers=workers)


# -- a run ---------------------------------------------------------------------------------

SIM = Path(sys.executable).parent / "midm-sim"
DEVICES = 12
SCENARIO = f"""
[scenario]
name = "scraped"
duration_s = 12
time_scale = 4
seed = 5
serial_prefix = "P-"

[catalog.apps.app-1]
package = "com.example.app"
version_code = 1

[kinds.box]
count = {DEVICES}
manufacturer = "Acme"
model = "B1"
group = "fleet"

[kinds.box.build]
fingerprint = "acme/b1/b1:13/A/1:user/release-keys"
build_date = 1690000000
device_id = "b1"

[arrival]
process = "even"
rate = 100

[[timeline]]
at_s = 0
action = "create_group"
name = "fleet"

[[timeline]]
at_s = 0
action = "upload_app"
app = "app-1"

[[timeline]]
at_s = 2
action = "save_profile"
name = "rollout"

[timeline.body]
scope = {{ group = ["fleet"] }}
apps = {{ install = [{{ app = "app-1", silent_install = true }}] }}
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "scraped.toml"
    path.write_text(SCENARIO)
    return path


async def test_a_runs_live_figures_equal_its_report(
    scenario: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real run (embedded server, 12 agents, a rollout) with --metrics-port 0, scraped when the
    fleet has stopped and the figures are frozen for the report: every endpoint's count, errors
    and latency buckets, the rollout's convergence and the devices equal report.json's. The URL
    is said once on stderr and the port closes with the run."""
    scraped: dict[str, Metric] = {}
    urls: list[str] = []
    settle = consistency.settle

    async def scrape_then_settle(*args: Any, **kwargs: Any) -> Any:
        err = capsys.readouterr().err
        urls.extend(line.split()[-1] for line in err.splitlines() if "metrics: http" in line)
        scraped.update(await scrape(urls[0]))
        return await settle(*args, **kwargs)

    monkeypatch.setattr("simulator.runner.settle", scrape_then_settle)
    settings = runner.RunSettings(
        scenario=scenario, report_dir=tmp_path / "r", progress=False, metrics_port=0
    )
    outcome = await runner.execute(settings, runner.plan_of(settings), asyncio.Event())
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(urls) == 1, urls
    assert "metrics: http" not in capsys.readouterr().err  # said once

    requests = report["requests"]
    assert requests["register"]["count"] == DEVICES
    assert series(scraped, "midm_sim_requests", "endpoint") == {
        key: e["count"] for key, e in requests.items()
    }
    for key, endpoint in requests.items():
        for error, n in endpoint["errors"].items():
            assert (
                value(scraped, "midm_sim_request_errors_total", endpoint=key, **{"class": error})
                == n
            )
        assert_histogram(scraped, "midm_sim_request_latency_seconds", endpoint["hdr"], endpoint=key)
    rollout = report["convergence"]["rollout"]
    assert rollout["applied"] > 0  # a rollout took place: the figures compared are not all 0
    labels = {"profile": "rollout", "uuid": rollout["uuid"]}
    for state in ("applied", "failed", "deferred"):
        assert value(scraped, f"midm_sim_convergence_{state}_devices", **labels) == rollout[state]
    assert value(scraped, "midm_sim_devices_planned") == report["devices"]["planned"] == DEVICES
    assert value(scraped, "midm_sim_devices_started") == report["devices"]["started"]
    assert scraped["midm_sim_run_info"].samples[0].labels["scenario"] == "scraped"
    assert outcome.report["generator"]["processes"] == 1
    port = int(urls[0].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_the_cli_serves_while_the_run_goes_and_stops_with_it(
    scenario: Path, tmp_path: Path
) -> None:
    """`midm-sim run --metrics-port 0`: one stderr line says where; while the fleet runs the
    endpoint serves the run's figures; Ctrl-C ends the run (exit 130) and the port with it."""
    command = [SIM, "run", scenario, "--duration", "3000", "--report", tmp_path / "r"]
    process = subprocess.Popen(
        [*map(str, command), "--no-progress", "--metrics-port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        url = None
        for line in iter(process.stderr.readline, ""):
            if line.startswith("midm-sim: metrics: "):
                url = line.split()[-1]
            if "devices" in line:  # the first progress line: the fleet is running
                break
        assert url is not None and url.startswith("http://127.0.0.1:")
        families = asyncio.run(scrape(url))
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "midm-sim: metrics:" not in err  # said once, before the run
    assert value(families, "midm_sim_devices_planned") == DEVICES
    assert families["midm_sim_run_info"].samples[0].labels["shard"] == "0/1"
    assert "midm_sim_request_latency_seconds" in families
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_with_workers_each_worker_serves_its_shard_and_the_parent_none(
    scenario: Path, tmp_path: Path
) -> None:
    """`--workers 2 --metrics-port 0`: each worker serves its own shard's figures on its own
    port (P+i; 0: each a free one), said once on the parent's stderr with the shard's prefix;
    the two shards' planned devices add up to the fleet; Ctrl-C closes both ports."""
    command = [SIM, "run", scenario, "--workers", "2", "--duration", "3000"]
    process = subprocess.Popen(
        [*map(str, command), "--report", tmp_path / "r", "--no-progress", "--metrics-port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    urls: dict[str, str] = {}
    try:
        assert process.stderr is not None
        running: set[str] = set()
        for line in iter(process.stderr.readline, ""):
            shard = line.split(":")[0] if line.startswith("shard ") else "parent"
            if "midm-sim: metrics: " in line:
                urls[shard] = line.split()[-1]
            if line.startswith("shard ") and ": t=" in line:  # its fleet runs
                running.add(shard)
                if len(running) == 2:
                    break
        scraped = {shard: asyncio.run(scrape(url)) for shard, url in urls.items()}
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert sorted(urls) == ["shard 0/2", "shard 1/2"]  # and none from the parent
    assert "midm-sim: metrics:" not in err  # each worker said it once, before its run
    for shard, families in scraped.items():
        assert families["midm_sim_run_info"].samples[0].labels["shard"] == shard.split()[1]
    planned = [value(families, "midm_sim_devices_planned") for families in scraped.values()]
    assert sum(planned) == DEVICES
    for url in urls.values():
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def sim(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIM), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_a_port_in_use_is_exit_2_before_anything_starts(scenario: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = sim(
            "run", scenario, "--metrics-port", port, "--report", tmp_path / "r", cwd=tmp_path
        )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert line.startswith(f"midm-sim: error: --metrics-port {port}: 127.0.0.1:{port} is in use")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--metrics-port", "65536"), "argument --metrics-port: 65536 is not a port"),
        (("--metrics-port", "-1"), "argument --metrics-port: -1 is not a port"),
        (("--metrics-port", "ninety"), "argument --metrics-port: 'ninety' is not an integer"),
        (("--metrics-host", "127.0.0.1"), "--metrics-host needs --metrics-port"),
        (
            ("--metrics-port", "0", "--metrics-host", "192.0.2.1"),
            "--metrics-host 192.0.2.1: not an",
        ),
    ],
)
def test_bad_metrics_settings_are_exit_2_in_one_line(
    args: tuple[str, ...], says: str, scenario: Path, tmp_path: Path
) -> None:
    done = sim("run", scenario, *args, "--report", tmp_path / "r", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in one_line(done.stderr)
    assert not (tmp_path / "r").exists()
