"""The simulator's measurements: exact HDR latencies from the intended send time, errors by class,
per-second rows, convergence from the agents' events, the loop probe, and exact merging."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.transport.base import Exchange
from simulator import figures
from simulator.figures import ErrorClass
from simulator.metrics import (
    Metrics,
    MetricsSnapshot,
    Usage,
    is_saturated,
    merge,
)


class Clock:
    """A settable real clock for the collector (no wall-clock time in tests)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def usage() -> Usage:
    return Usage(cpu_s=2.0, rss_mb=64.0)


def metrics(clock: Clock, *, time_scale: float = 1.0) -> Metrics:
    return Metrics(clock, time_scale=time_scale, usage=usage)


def exchange(
    name: str = "checkin",
    *,
    intended: float = 0.0,
    late: float = 0.0,
    duration: float = 0.01,
    status: int = 200,
    error: str | None = None,
) -> Exchange:
    return Exchange(
        name=name,
        intended=intended,
        started=intended + late,
        duration=duration,
        status=status,
        error=error,
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("checkin", "checkin"),
        ("ota_next", "ota/next"),
        ("push", "ws"),
        ("download", "file"),
        ("register", "register"),
        ("login", "admin:auth"),
        ("exists", "admin:device/exists"),
        ("save", "admin:device/save"),
        ("admin:profile/save", "admin:profile/save"),
    ],
)
def test_endpoint_keys_follow_the_report_schema(name: str, key: str) -> None:
    """Exchange names map to §9's endpoint keys; admin calls keep their admin: path."""
    assert figures.endpoint_key(name) == key


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (200, None, None),
        (101, None, None),
        (304, None, None),
        (404, None, ErrorClass.HTTP_4XX),
        (429, None, ErrorClass.HTTP_4XX),
        (503, None, ErrorClass.HTTP_5XX),
        (403, "WSServerHandshakeError", ErrorClass.HTTP_4XX),
        (0, "timeout", ErrorClass.TIMEOUT),
        (200, "timeout", ErrorClass.TIMEOUT),  # the body never finished
        (0, "ClientConnectorError", ErrorClass.CONNECT),
        (0, "ConnectionRefusedError", ErrorClass.CONNECT),
        (0, "ServerDisconnectedError", ErrorClass.DISCONNECT),
        (200, "ClientPayloadError", ErrorClass.DISCONNECT),
        (0, "SomethingElse", ErrorClass.OTHER),
    ],
)
def test_error_classes(status: int, error: str | None, expected: ErrorClass | None) -> None:
    """HTTP statuses by hundreds, timeouts, connects and drops are told apart."""
    assert figures.classify(status, error) == expected


def test_latency_runs_from_the_intended_send_time() -> None:
    """A check-in meant for t=10 that went out 0.5 s late and took 20 ms counts 520 ms."""
    m = metrics(Clock())
    m.observe(exchange(intended=10.0, late=0.5, duration=0.02))
    snap = m.snapshot()
    latency = figures.latency_ms(figures.decode(snap.requests["checkin"].hdr))
    assert latency["p50"] == pytest.approx(520.0, rel=1e-3)
    assert latency["max"] == pytest.approx(520.0, rel=1e-3)
    lateness = figures.latency_ms(figures.decode(snap.generator.lateness_hdr))
    assert lateness["max"] == pytest.approx(500.0, rel=1e-3)


def test_scaled_clock_times_become_real_milliseconds() -> None:
    """With --time-scale 10 an exchange's agent-clock seconds are divided by 10."""
    m = metrics(Clock(), time_scale=10.0)
    m.observe(exchange(duration=0.5))
    latency = figures.latency_ms(figures.decode(m.snapshot().requests["checkin"].hdr))
    assert latency["p99"] == pytest.approx(50.0, rel=1e-3)


def test_errors_are_counted_by_class_and_cancelled_exchanges_are_not_counted() -> None:
    """Errors go by class per endpoint; an exchange cut short by the stop is only tallied."""
    m = metrics(Clock())
    m.observe(exchange(status=503))
    m.observe(exchange(status=0, error="timeout"))
    m.observe(exchange(status=0, error="timeout"))
    m.observe(exchange())
    m.observe(exchange(status=0, error=None))  # cancelled
    snap = m.snapshot()
    assert snap.requests["checkin"].count == 4
    assert snap.requests["checkin"].errors == {"http_5xx": 1, "timeout": 2}
    assert snap.cancelled == 1
    stats = m.statistics()
    assert (stats.requests, stats.errors) == (4, 3)


def test_the_timeline_has_one_row_a_second_with_its_own_p99() -> None:
    """Rows for every second (empty ones too), device requests only, p99 per row, sockets."""
    clock = Clock(100.0)
    m = metrics(clock)
    m.websockets(3)
    clock.now = 100.2
    m.observe(exchange(duration=0.010))
    clock.now = 100.7
    m.observe(exchange(duration=0.030, status=500))
    m.observe(exchange("admin:profile/save", duration=1.0))  # not device load
    clock.now = 101.1
    m.observe(exchange(duration=0.005))
    assert m.statistics().rps == 2
    assert m.statistics().p99_ms == pytest.approx(30.0, rel=1e-2)
    clock.now = 103.5
    m.websockets(5)
    m.observe(exchange("download", duration=9.0))  # counted, kept out of the p99
    rows = m.snapshot().timeline
    assert [(r.t, r.requests, r.errors, r.websockets) for r in rows] == [
        (0, 2, 1, 3),
        (1, 1, 0, 3),
        (2, 0, 0, 3),
        (3, 1, 0, 5),
    ]
    assert figures.percentile_ms(figures.decode(rows[0].hdr), 99.0) == pytest.approx(30, rel=1e-2)
    assert figures.decode(rows[3].hdr).get_total_count() == 0
    assert m.statistics().rps == 0  # the last whole second (t=2) was empty


def test_convergence_counts_from_the_profile_save_to_each_applied_event() -> None:
    """A device has applied at its profile `applied` event; deferrals and failures counted."""
    clock = Clock(0.0)
    m = metrics(clock, time_scale=2.0)
    clock.now = 5.0
    m.profile_saved("rollout", "u-1")  # scenario second 10
    clock.now = 6.0
    m.profile_saved("rollout", "u-1")  # an edit: the first save stands
    event = {"profileUuid": "u-1", "kind": "profile", "status": "applied"}
    for serial, now in (("a", 7.0), ("b", 8.0)):
        clock.now = now
        m.device_event(serial, event)
    clock.now = 9.0
    m.device_event("a", event)  # again: the first time counts
    m.device_event("c", {"profileUuid": "u-1", "kind": "ota", "status": "deferred"})
    m.device_event("c", {"profileUuid": "u-1", "kind": "profile", "status": "failed"})
    m.device_event("d", {"kind": "app", "status": "installed"})  # no profile: only tallied
    snap = m.snapshot()
    assert snap.saves["u-1"].name == "rollout"
    assert snap.saves["u-1"].at_s == 10.0
    progress = snap.profiles["u-1"]
    assert progress.applied == {"a": 14.0, "b": 16.0}
    assert progress.failed == {"c": 18.0}
    assert progress.deferred == frozenset({"c"})
    assert progress.seen == frozenset({"a", "b", "c"})
    assert snap.events_queued == 6
    assert m.statistics().convergence == (("rollout", 2, 3),)


@pytest.mark.parametrize(
    ("times", "scoped", "t50", "t90", "t99"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10, 5, 9, 10),  # 0.9 * 10 is 9 devices, not 10
        ([3, 1, 2], 3, 2, 3, 3),
        ([1, 2, 3, 4, 5], 10, 5, None, None),  # half the scoped applied
        ([1, 2, 3, 4], 10, None, None, None),
        ([], 10, None, None, None),
        ([], 0, None, None, None),
        ([-2.0, 4.0], 2, 0.0, 4.0, 4.0),  # before the save was seen: 0
        ([float(i) for i in range(1, 101)], 100, 50, 90, 99),
        ([float(i) for i in range(1, 1001)], 1000, 500, 900, 990),
        ([7, 7, 7], 1, 7, 7, 7),  # more appliers than scoped: scoped grows to them
    ],
)
def test_convergence_times(
    times: list[float], scoped: int, t50: float | None, t90: float | None, t99: float | None
) -> None:
    """tNN is when ceil(NN% of the scoped devices) had applied; None when never reached."""
    c = figures.convergence(times, scoped=scoped)
    assert (c.t50_s, c.t90_s, c.t99_s) == (t50, t90, t99)
    assert c.applied == len(times)


def test_the_convergence_curve_is_a_thinned_step_curve_that_keeps_its_ends() -> None:
    """One point per distinct time from (0, 0); big fleets keep CURVE_POINTS, first and last."""
    assert figures.curve([1.0, 1.0, 2.0], 4) == ((0.0, 0.0), (1.0, 0.5), (2.0, 0.75))
    assert figures.curve([], 4) == ((0.0, 0.0),)
    assert figures.curve([1.0], 0) == ()
    times = [i / 10 for i in range(5000)]
    curve = figures.curve(times, 5000)
    assert len(curve) == figures.CURVE_POINTS + 1
    assert curve[1] == (0.0, 0.0002)
    assert curve[-1] == (499.9, 1.0)
    assert [p[0] for p in curve] == sorted(p[0] for p in curve)
    c = figures.convergence([2.0, 4.0], scoped=4)
    assert c.fraction == 0.5
    assert c.to_json()["curve"] == [[0.0, 0.0], [2.0, 0.25], [4.0, 0.5]]


def test_empty_histograms_report_no_percentiles() -> None:
    assert figures.latency_ms(figures.new_histogram()) == {
        "p50": None,
        "p90": None,
        "p99": None,
        "p999": None,
        "max": None,
    }


def test_values_beyond_the_range_are_clamped_not_dropped() -> None:
    """A 2-hour exchange counts (as one hour), a zero-length one as 1 us."""
    h = figures.new_histogram()
    figures.record_us(h, 7200.0)
    figures.record_us(h, 0.0)
    assert h.get_total_count() == 2
    assert figures.latency_ms(h)["max"] == pytest.approx(3_600_000, rel=1e-3)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=8000.0, allow_nan=False), max_size=300),
    st.sampled_from([figures.DIGITS, figures.ROW_DIGITS]),
)
def test_the_recorder_holds_exactly_what_recording_each_value_holds(
    values: list[float], digits: int
) -> None:
    """The hot path's Recorder (counts by bucket, added when read) against record_us one value
    at a time: the same encoding (counts), percentiles, min and max; read twice, reset."""
    direct, recorder = figures.new_histogram(digits), figures.Recorder(digits)
    for i, seconds in enumerate(values):
        figures.record_us(direct, seconds)
        recorder.record(seconds)
        if i == len(values) // 2:
            assert recorder.histogram.get_total_count() == i + 1  # read midway, then more
    held = recorder.histogram
    assert figures.encode(held) == figures.encode(direct)
    assert figures.latency_ms(held) == figures.latency_ms(direct)
    assert held.get_min_value() == direct.get_min_value()
    assert recorder.histogram is held
    recorder.reset()
    assert recorder.histogram.get_total_count() == 0


def _record(m: Metrics, clock: Clock, values: list[tuple[float, float, str]]) -> None:
    for at, duration, name in values:
        clock.now = 1000.0 + at
        m.observe(exchange(name, duration=duration, status=500 if duration > 0.5 else 200))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 5),
            st.floats(0.0001, 2.0),
            st.sampled_from(["checkin", "apps", "ota_next"]),
        ),
        max_size=60,
    ),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
def test_merging_shards_equals_measuring_everything_in_one(
    values: list[tuple[float, float, str]], shards: int, rng: random.Random
) -> None:
    """Histograms, counts, errors and rows of shards merge exactly into the whole's."""
    values.sort()
    whole_clock = Clock()
    whole = Metrics(whole_clock, origin=1000.0, usage=usage)
    _record(whole, whole_clock, values)
    parts = [Clock() for _ in range(shards)]
    collectors = [Metrics(c, origin=1000.0, usage=usage) for c in parts]
    split: list[list[tuple[float, float, str]]] = [[] for _ in range(shards)]
    for value in values:
        split[rng.randrange(shards)].append(value)
    for collector, clock, share in zip(collectors, parts, split, strict=True):
        _record(collector, clock, share)
        clock.now = whole_clock.now  # every snapshot taken at the same moment
    merged = merge([c.snapshot() for c in collectors])
    expected = whole.snapshot()
    assert merged.requests.keys() == expected.requests.keys()
    for key, entry in expected.requests.items():
        got = merged.requests[key]
        assert (got.count, dict(got.errors)) == (entry.count, dict(entry.errors))
        assert figures.decode(got.hdr).equals(figures.decode(entry.hdr))
    assert [(r.t, r.requests, r.errors) for r in merged.timeline] == [
        (r.t, r.requests, r.errors) for r in expected.timeline
    ]
    for got_row, row in zip(merged.timeline, expected.timeline, strict=True):
        assert figures.decode(got_row.hdr).equals(figures.decode(row.hdr))
    assert merged.generator.processes == shards
    assert merged.generator.cpu_s == 0.0


def test_merge_unites_convergence_and_sums_usage() -> None:
    """Profile saves and device progress from several workers unite (earliest time wins)."""
    clocks = [Clock(0.0), Clock(0.0)]
    first, second = (Metrics(c, origin=0.0, usage=usage) for c in clocks)
    clocks[0].now = 1.0
    first.profile_saved("p", "u")
    applied = {"profileUuid": "u", "kind": "profile", "status": "applied"}
    clocks[0].now = 4.0
    first.device_event("a", applied)
    clocks[1].now = 3.0
    second.device_event("a", applied)
    second.device_event("b", applied)
    merged = merge([first.snapshot(), second.snapshot()])
    assert merged.saves["u"].at_s == 1.0
    assert merged.profiles["u"].applied == {"a": 3.0, "b": 3.0}
    assert merged.profiles["u"].seen == frozenset({"a", "b"})
    with pytest.raises(ValueError, match="time scales"):
        merge([first.snapshot(), Metrics(Clock(), time_scale=2.0).snapshot()])
    with pytest.raises(ValueError, match="nothing"):
        merge([])


def test_a_snapshot_survives_json() -> None:
    """to_json/from_json round-trips (report.json keeps it for midm-sim merge)."""
    clock = Clock(0.0)
    m = Metrics(clock, usage=usage)
    m.observe(exchange(status=404))
    m.profile_saved("p", "u")
    m.device_event("a", {"profileUuid": "u", "kind": "profile", "status": "applied"})
    m.record_send_lag(0.002)
    clock.now = 2.5
    m.observe(exchange("push", status=101))
    snap = m.snapshot()
    assert MetricsSnapshot.from_json(snap.to_json()) == snap
    with pytest.raises(ValueError, match="snapshot"):
        MetricsSnapshot.from_json({"version": 99})


def test_generator_usage_counts_from_the_collectors_start() -> None:
    """CPU is what the run used after the collector began; RSS the peak."""
    readings = iter([Usage(cpu_s=5.0, rss_mb=10.0), Usage(cpu_s=7.5, rss_mb=80.0)])
    m = Metrics(Clock(), usage=lambda: next(readings))
    g = m.snapshot().generator
    assert (g.cpu_s, g.rss_mb, g.processes) == (2.5, 80.0, 1)


async def test_the_probe_records_how_late_the_loop_woke_it() -> None:
    """Each wake-up's lateness is a send-lag sample; a p99 above 10 ms is saturation."""
    m = metrics(Clock())
    now = [0.0]
    lags = iter([0.001] * 50 + [0.030] * 50)

    async def sleep(seconds: float) -> None:
        try:
            now[0] += seconds + next(lags)
        except StopIteration:
            raise asyncio.CancelledError from None

    with pytest.raises(asyncio.CancelledError):
        await m.probe(0.01, sleep=sleep, now=lambda: now[0])
    g = m.snapshot().generator
    lag = figures.latency_ms(figures.decode(g.send_lag_hdr))
    # corrected for coordinated omission: each 30 ms wake-up also stands for the 20 and 10 ms
    # wake-ups it swallowed, so 50 samples of 1 ms and 150 of 10-30 ms: the median is 10 ms
    assert lag["p50"] == pytest.approx(10.0, rel=1e-2)
    assert lag["max"] == pytest.approx(30.0, rel=1e-2)
    assert g.saturated
    assert m.statistics().saturated


async def test_a_stall_counts_for_the_probe_wake_ups_it_swallowed() -> None:
    """One 500 ms stall among 200 prompt wake-ups of a 10 ms probe: corrected for coordinated
    omission the stall also stands for the 49 wake-ups it swallowed, so p99 shows it (an
    uncorrected histogram would hold one sample in 201 and a p99 of about 1 ms)."""
    m = metrics(Clock())
    now = [0.0]
    lags = iter([0.001] * 100 + [0.5] + [0.001] * 100)

    async def sleep(seconds: float) -> None:
        try:
            now[0] += seconds + next(lags)
        except StopIteration:
            raise asyncio.CancelledError from None

    with pytest.raises(asyncio.CancelledError):
        await m.probe(0.01, sleep=sleep, now=lambda: now[0])
    lag = figures.latency_ms(figures.decode(m.snapshot().generator.send_lag_hdr))
    p99 = lag["p99"]
    assert p99 is not None and p99 > 10.0 and lag["max"] == pytest.approx(500.0, rel=1e-2)
    assert m.snapshot().generator.saturated


async def test_the_probe_starts_and_stops_on_the_running_loop() -> None:
    """start/stop (and the context manager) leave no task behind."""
    m = metrics(Clock())
    async with m.generator_probe(0.001):
        await asyncio.sleep(0)
    await m.stop_generator_probe()  # a second stop is harmless
    m.start_generator_probe()
    await m.stop_generator_probe()
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


def test_saturation_falls_back_to_request_lateness_without_a_probe() -> None:
    """No probe samples: the planned requests' lateness decides."""
    lateness = figures.new_histogram()
    for _ in range(100):
        figures.record_us(lateness, 0.050)
    assert is_saturated(figures.new_histogram(), lateness)
    assert not is_saturated(figures.new_histogram(), figures.new_histogram())
    probe = figures.new_histogram()
    figures.record_us(probe, 0.001)
    assert not is_saturated(probe, lateness)  # the probe, when it ran, is the judge


def test_time_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        Metrics(Clock(), time_scale=0)
