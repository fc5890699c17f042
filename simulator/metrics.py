"""The simulator's stats collector: what the fleet's exchanges and agents tell it, kept exactly.

Theory of operation. The transport hands `observe()` every Exchange (times on the agent's Clock,
scenario seconds: divided by the time scale they are real seconds). A request's latency runs from
its *intended* send time (Exchange.intended: the agent's schedule), not from when it went out, so
a late generator cannot hide the server's slowness (coordinated omission). Latencies go into one
HDR histogram per endpoint (microseconds) with counts and errors by class; a second row of the
timeline (real seconds since `origin`) counts device requests and errors and keeps its own
histogram (p99 over time); each through a figures.Recorder (counted by bucket, added to the
histogram when read: exact, and cheap per exchange). `device_event()` hears the agents' profile
events: a device has applied a profile at the time of its profile `applied` event; convergence
is measured from the profile's first save (`profile_saved()`). The generator's health: process
CPU and RSS, and the event loop's send lag (a probe task's scheduled wake-up vs the actual, on
the real loop; the exchanges' lateness is kept beside it): a p99 above 10 ms marks the run
`saturated`.

`snapshot()` freezes everything into a MetricsSnapshot of JSON values (histograms encoded), and
`merge(snapshots)` adds shards' snapshots exactly (counts added, histograms added). Workers that
share one `origin` (CLOCK_MONOTONIC is system-wide) line their timelines up.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.transport.base import Exchange
from simulator import figures

SATURATED_LAG_MS = 10.0  # send-lag p99 above this: the run's latencies are not trustworthy
PROBE_INTERVAL_S = 0.01
SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """The process's resources: CPU seconds (user + system) and peak RSS in MB."""

    cpu_s: float
    rss_mb: float


def process_usage() -> Usage:
    """This process's usage (getrusage: children such as the embedded server are not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    per_mb = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes vs KB
    return Usage(cpu_s=usage.ru_utime + usage.ru_stime, rss_mb=usage.ru_maxrss / per_mb)


# --- snapshots: JSON values, mergeable ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSnapshot:
    count: int
    errors: Mapping[str, int]  # ErrorClass -> count (only classes that occurred)
    hdr: str  # latency from the intended send time, microseconds


@dataclass(frozen=True, slots=True, kw_only=True)
class SecondSnapshot:
    """One real second of the run: device requests that ended in it, errors, open WebSockets,
    and the latencies of its device requests (downloads excepted) at 2 significant digits."""

    t: int
    requests: int
    errors: int
    websockets: int
    hdr: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileProgress:
    """What the agents said about one profile (times: scenario seconds since the origin)."""

    applied: Mapping[str, float]  # serial -> first profile `applied` event
    failed: Mapping[str, float]  # serial -> first profile `failed` event
    deferred: frozenset[str]  # serials that deferred any part of it at least once
    seen: frozenset[str]  # serials that reported any event for it


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSave:
    name: str
    at_s: float  # scenario seconds since the origin


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorSnapshot:
    cpu_s: float
    rss_mb: float  # peak; summed over merged processes
    send_lag_hdr: str  # the probe's samples (microseconds)
    lateness_hdr: str  # planned exchanges' started - intended (microseconds, real time)
    saturated: bool
    processes: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSnapshot:
    time_scale: float
    elapsed_s: float  # real seconds since the origin
    requests: Mapping[str, EndpointSnapshot]
    timeline: tuple[SecondSnapshot, ...]
    saves: Mapping[str, ProfileSave]  # profile uuid -> first save
    profiles: Mapping[str, ProfileProgress]  # profile uuid -> progress
    generator: GeneratorSnapshot
    events_queued: int = 0
    cancelled: int = 0  # exchanges cut short by the run's stop (not counted anywhere else)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "time_scale": self.time_scale,
            "elapsed_s": self.elapsed_s,
            "requests": {
                key: {"count": e.count, "errors": dict(e.errors), "hdr": e.hdr}
                for key, e in sorted(self.requests.items())
            },
            "timeline": [
                {
                    "t": r.t,
                    "requests": r.requests,
                    "errors": r.errors,
                    "websockets": r.websockets,
                    "hdr": r.hdr,
                }
                for r in self.timeline
            ],
            "saves": {u: {"name": s.name, "at_s": s.at_s} for u, s in sorted(self.saves.items())},
            "profiles": {
                u: {
                    "applied": dict(sorted(p.applied.items())),
                    "failed": dict(sorted(p.failed.items())),
                    "deferred": sorted(p.deferred),
                    "seen": sorted(p.seen),
                }
                for u, p in sorted(self.profiles.items())
            },
            "generator": {
                "cpu_s": self.generator.cpu_s,
                "rss_mb": self.generator.rss_mb,
                "send_lag_hdr": self.generator.send_lag_hdr,
                "lateness_hdr": self.generator.lateness_hdr,
                "saturated": self.generator.saturated,
                "processes": self.generator.processes,
            },
            "events_queued": self.events_queued,
            "cancelled": self.cancelled,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MetricsSnapshot:
        """The snapshot `to_json()` wrote (KeyError/TypeError/ValueError when it is not one)."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"not a metrics snapshot of version {SNAPSHOT_VERSION}")
        g = data["generator"]
        return cls(
            time_scale=float(data["time_scale"]),
            elapsed_s=float(data["elapsed_s"]),
            requests={
                str(k): EndpointSnapshot(
                    count=int(v["count"]),
                    errors={str(c): int(n) for c, n in v["errors"].items()},
                    hdr=str(v["hdr"]),
                )
                for k, v in data["requests"].items()
            },
            timeline=tuple(
                SecondSnapshot(
                    t=int(r["t"]),
                    requests=int(r["requests"]),
                    errors=int(r["errors"]),
                    websockets=int(r["websockets"]),
                    hdr=str(r["hdr"]),
                )
                for r in data["timeline"]
            ),
            saves={
                str(u): ProfileSave(name=str(s["name"]), at_s=float(s["at_s"]))
                for u, s in data["saves"].items()
            },
            profiles={
                str(u): ProfileProgress(
                    applied={str(k): float(t) for k, t in p["applied"].items()},
                    failed={str(k): float(t) for k, t in p["failed"].items()},
                    deferred=frozenset(map(str, p["deferred"])),
                    seen=frozenset(map(str, p["seen"])),
                )
                for u, p in data["profiles"].items()
            },
            generator=GeneratorSnapshot(
                cpu_s=float(g["cpu_s"]),
                rss_mb=float(g["rss_mb"]),
                send_lag_hdr=str(g["send_lag_hdr"]),
                lateness_hdr=str(g["lateness_hdr"]),
                saturated=bool(g["saturated"]),
                processes=int(g["processes"]),
            ),
            events_queued=int(data["events_queued"]),
            cancelled=int(data["cancelled"]),
        )


def is_saturated(send_lag: Any, lateness: Any) -> bool:
    """The probe's send-lag p99 above SATURATED_LAG_MS (the exchanges' lateness when no probe
    ran: a run that measured nothing of its loop is judged by how late its requests went)."""
    source = send_lag if send_lag.get_total_count() else lateness
    p99 = figures.percentile_ms(source, 99.0)
    return p99 is not None and p99 > SATURATED_LAG_MS


def merge(snapshots: Sequence[MetricsSnapshot]) -> MetricsSnapshot:
    """One snapshot of several shards' (same time scale and origin): counts and histograms
    added, timelines added second by second, profile progress united (the earliest time of a
    device wins), generator usage summed; saturated if any shard was or the merged lag is."""
    if not snapshots:
        raise ValueError("nothing to merge")
    scales = {s.time_scale for s in snapshots}
    if len(scales) > 1:
        raise ValueError(f"snapshots of different time scales: {sorted(scales)}")
    requests: dict[str, EndpointSnapshot] = {}
    for key in sorted({k for s in snapshots for k in s.requests}):
        parts = [s.requests[key] for s in snapshots if key in s.requests]
        requests[key] = EndpointSnapshot(
            count=sum(p.count for p in parts),
            errors=figures.sum_counts(p.errors for p in parts),
            hdr=figures.encode(figures.merged(p.hdr for p in parts)),
        )
    rows: dict[int, list[SecondSnapshot]] = {}
    for snapshot in snapshots:
        for row in snapshot.timeline:
            rows.setdefault(row.t, []).append(row)
    timeline = tuple(
        SecondSnapshot(
            t=t,
            requests=sum(r.requests for r in parts),
            errors=sum(r.errors for r in parts),
            websockets=sum(r.websockets for r in parts),
            hdr=figures.encode(figures.merged((r.hdr for r in parts), figures.ROW_DIGITS)),
        )
        for t, parts in sorted(rows.items())
    )
    saves: dict[str, ProfileSave] = {}
    for snapshot in snapshots:
        for uuid, save in snapshot.saves.items():
            if uuid not in saves or save.at_s < saves[uuid].at_s:
                saves[uuid] = save
    profiles = {
        uuid: _merge_progress([s.profiles[uuid] for s in snapshots if uuid in s.profiles])
        for uuid in sorted({u for s in snapshots for u in s.profiles})
    }
    send_lag = figures.merged(s.generator.send_lag_hdr for s in snapshots)
    lateness = figures.merged(s.generator.lateness_hdr for s in snapshots)
    generator = GeneratorSnapshot(
        cpu_s=sum(s.generator.cpu_s for s in snapshots),
        rss_mb=sum(s.generator.rss_mb for s in snapshots),
        send_lag_hdr=figures.encode(send_lag),
        lateness_hdr=figures.encode(lateness),
        saturated=any(s.generator.saturated for s in snapshots) or is_saturated(send_lag, lateness),
        processes=sum(s.generator.processes for s in snapshots),
    )
    return MetricsSnapshot(
        time_scale=snapshots[0].time_scale,
        elapsed_s=max(s.elapsed_s for s in snapshots),
        requests=requests,
        timeline=timeline,
        saves=saves,
        profiles=profiles,
        generator=generator,
        events_queued=sum(s.events_queued for s in snapshots),
        cancelled=sum(s.cancelled for s in snapshots),
    )


def _merge_progress(parts: Iterable[ProfileProgress]) -> ProfileProgress:
    applied: dict[str, float] = {}
    failed: dict[str, float] = {}
    deferred: set[str] = set()
    seen: set[str] = set()
    for part in parts:
        for target, source in ((applied, part.applied), (failed, part.failed)):
            for serial, t in source.items():
                target[serial] = min(t, target.get(serial, t))
        deferred |= part.deferred
        seen |= part.seen
    return ProfileProgress(
        applied=applied, failed=failed, deferred=frozenset(deferred), seen=frozenset(seen)
    )


# --- the live collector ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveStatistics:
    """Cheap figures for the live progress display (no histogram is encoded)."""

    elapsed_s: float  # real seconds since the origin
    requests: int  # device requests so far
    errors: int
    rps: int  # device requests in the last whole second
    p99_ms: float | None  # of the last whole second
    websockets: int
    send_lag_p99_ms: float | None
    saturated: bool
    convergence: tuple[tuple[str, int, int], ...]  # (profile name, applied, devices seen)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveEndpoint:
    """One endpoint as it stands. `histogram` is the collector's own, not a copy: read it in
    the same turn of the loop and never write it."""

    count: int
    errors: Mapping[str, int]
    histogram: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveProfile:
    uuid: str
    name: str  # the uuid when its save was not seen
    saved_at_s: float | None  # scenario seconds since the origin of the first save
    applied: int
    failed: int  # failed and never applied (as the report counts them)
    deferred: int
    seen: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveReadings:
    """What a scrape exports (simulator.prometheus): bounded work, O(endpoints + profiles +
    failed devices), no histogram copied or encoded; every count only grows during a run."""

    elapsed_s: float
    endpoints: Mapping[str, LiveEndpoint]
    profiles: tuple[LiveProfile, ...]
    websockets: int
    send_lag: Any  # the live histograms (microseconds): read, never write
    lateness: Any
    cpu_s: float  # since the Metrics were made
    rss_mb: float  # peak
    events_queued: int
    cancelled: int


class _Endpoint:
    __slots__ = ("count", "errors", "latency")

    def __init__(self) -> None:
        self.count = 0
        self.errors: dict[str, int] = {}
        self.latency = figures.Recorder()


class _Progress:
    __slots__ = ("applied", "deferred", "failed", "seen")

    def __init__(self) -> None:
        self.applied: dict[str, float] = {}
        self.failed: dict[str, float] = {}
        self.deferred: set[str] = set()
        self.seen: set[str] = set()


@dataclass(slots=True)
class _Row:
    t: int
    requests: int = 0
    errors: int = 0
    websockets: int = 0
    latency: figures.Recorder = field(default_factory=lambda: figures.Recorder(figures.ROW_DIGITS))


class Metrics:
    """Collects a run's measurements in one process (the observer of its fleet's transports).

    `clock_monotonic` is the real monotonic clock (time.monotonic in a run; a fake in tests);
    `time_scale` the run's --time-scale (Exchange times are on the agents' scaled clocks);
    `origin` the run's start on `clock_monotonic` (default: now), shared by a run's workers.
    """

    def __init__(
        self,
        clock_monotonic: Callable[[], float],
        *,
        time_scale: float = 1.0,
        origin: float | None = None,
        usage: Callable[[], Usage] = process_usage,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self._clock = clock_monotonic
        self._scale = time_scale
        self._origin = clock_monotonic() if origin is None else origin
        self._usage = usage
        self._cpu_at_start = usage().cpu_s
        self._endpoints: dict[str, _Endpoint] = {}
        # exchange name -> its endpoint, whether it is an admin call, whether a download: looked
        # up once a name (a fleet has a handful), not three calls an exchange
        self._by_name: dict[str, tuple[_Endpoint, bool, bool]] = {}
        self._rows: list[SecondSnapshot] = []
        self._row = _Row(t=0)
        self._last: tuple[int, float | None] = (0, None)  # the last whole second: rps, p99
        self._requests = 0
        self._errors = 0
        self._websockets = 0
        self._saves: dict[str, ProfileSave] = {}
        self._progress: dict[str, _Progress] = {}
        self._send_lag = figures.new_histogram()
        self._lateness = figures.Recorder()
        self._events_queued = 0
        self._cancelled = 0
        self._probe: asyncio.Task[None] | None = None

    # -- what the run tells it

    def observe(self, exchange: Exchange) -> None:
        """The transports' observer: one exchange that ended just now."""
        if exchange.status == 0 and exchange.error is None:  # cancelled: the run is stopping
            self._cancelled += 1
            return
        known = self._by_name.get(exchange.name)
        if known is None:
            key = figures.endpoint_key(exchange.name)
            endpoint = self._endpoints.get(key)
            if endpoint is None:
                endpoint = self._endpoints[key] = _Endpoint()
            known = self._by_name[exchange.name] = (endpoint, figures.is_admin(key), key == "file")
        endpoint, admin, download = known
        started, intended = exchange.started, exchange.intended
        lateness = max(0.0, started - intended) / self._scale
        latency = lateness + exchange.duration / self._scale
        endpoint.latency.record(latency)
        endpoint.count += 1
        if started != intended:
            self._lateness.record(lateness)
        error = (
            None
            if exchange.error is None and exchange.status < 400
            else figures.classify(exchange.status, exchange.error)
        )
        if error is not None:
            endpoint.errors[error] = endpoint.errors.get(error, 0) + 1
        if admin:
            return
        row = self._current_row()
        row.requests += 1
        self._requests += 1
        if error is not None:
            row.errors += 1
            self._errors += 1
        if not download:
            row.latency.record(latency)

    def device_event(self, serial: str, event: Mapping[str, Any]) -> None:
        """An event an agent queued (the protocol's event body): profile `applied`/`failed`
        events and deferrals of any part feed the profile's convergence."""
        self._events_queued += 1
        uuid = event.get("profileUuid")
        if not isinstance(uuid, str) or not uuid:
            return
        progress = self._progress.get(uuid)
        if progress is None:
            progress = self._progress[uuid] = _Progress()
        progress.seen.add(serial)
        status = event.get("status")
        if status == "deferred":
            progress.deferred.add(serial)
        elif event.get("kind") == "profile" and status in ("applied", "failed"):
            target = progress.applied if status == "applied" else progress.failed
            target.setdefault(serial, self._scenario_s())

    def profile_saved(self, name: str, uuid: str, *, at_s: float | None = None) -> None:
        """The timeline saved profile `name` as `uuid` (now, or at scenario second `at_s`);
        convergence counts from the first save (an edit keeps it)."""
        if uuid not in self._saves:
            when = self._scenario_s() if at_s is None else at_s
            self._saves[uuid] = ProfileSave(name=name, at_s=when)

    def websockets(self, n: int) -> None:
        """How many push channels are open now (the fleet tells it when that changes)."""
        row = self._current_row()  # earlier seconds keep the count they had
        self._websockets = n
        row.websockets = max(row.websockets, n)

    def record_send_lag(self, seconds: float, *, interval_s: float | None = None) -> None:
        """One probe sample: how late a timer woke (real seconds). With the probe's
        `interval_s`, a stall also counts for the wake-ups it swallowed (no coordinated
        omission in the generator's own health either)."""
        if interval_s is None:
            figures.record_us(self._send_lag, max(0.0, seconds))
        else:
            figures.record_us_corrected(self._send_lag, max(0.0, seconds), interval_s)

    # -- the loop probe

    async def probe(
        self,
        interval_s: float = PROBE_INTERVAL_S,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now: Callable[[], float] | None = None,
    ) -> None:
        """Until cancelled: sleep `interval_s`, record how late the wake-up came (the event
        loop's send lag: what every agent's timer suffers too). Runs on the real loop."""
        loop_time = asyncio.get_running_loop().time if now is None else now
        while True:
            due = loop_time() + interval_s
            await sleep(interval_s)
            self.record_send_lag(loop_time() - due, interval_s=interval_s)

    def start_generator_probe(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        """Start the probe task on the running loop (stop_generator_probe() ends it)."""
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self.probe(interval_s))

    async def stop_generator_probe(self) -> None:
        task, self._probe = self._probe, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def generator_probe(self, interval_s: float = PROBE_INTERVAL_S) -> AsyncIterator[None]:
        """The probe runs for the duration of the block."""
        self.start_generator_probe(interval_s)
        try:
            yield
        finally:
            await self.stop_generator_probe()

    # -- what it tells

    def statistics(self) -> LiveStatistics:
        self._current_row()
        rps, p99 = self._last
        names = {uuid: save.name for uuid, save in self._saves.items()}
        return LiveStatistics(
            elapsed_s=self._clock() - self._origin,
            requests=self._requests,
            errors=self._errors,
            rps=rps,
            p99_ms=p99,
            websockets=self._websockets,
            send_lag_p99_ms=figures.percentile_ms(self._send_lag, 99.0),
            saturated=is_saturated(self._send_lag, self._lateness.histogram),
            convergence=tuple(
                (names.get(uuid, uuid), len(p.applied), len(p.seen))
                for uuid, p in sorted(self._progress.items(), key=lambda i: names.get(i[0], i[0]))
            ),
        )

    def readings(self) -> LiveReadings:
        """The live figures without copying a histogram (for a scrape: read them at once)."""
        usage = self._usage()
        return LiveReadings(
            elapsed_s=self._clock() - self._origin,
            endpoints={
                key: LiveEndpoint(
                    count=e.count, errors=dict(e.errors), histogram=e.latency.histogram
                )
                for key, e in self._endpoints.items()
            },
            profiles=tuple(
                _live_profile(uuid, self._saves.get(uuid), self._progress.get(uuid))
                for uuid in sorted(self._saves.keys() | self._progress.keys())
            ),
            websockets=self._websockets,
            send_lag=self._send_lag,
            lateness=self._lateness.histogram,
            cpu_s=usage.cpu_s - self._cpu_at_start,
            rss_mb=usage.rss_mb,
            events_queued=self._events_queued,
            cancelled=self._cancelled,
        )

    def snapshot(self) -> MetricsSnapshot:
        """Everything so far (the current second included as it stands), as JSON-able values."""
        row = self._current_row()
        usage = self._usage()
        return MetricsSnapshot(
            time_scale=self._scale,
            elapsed_s=self._clock() - self._origin,
            requests={
                key: EndpointSnapshot(
                    count=e.count, errors=dict(e.errors), hdr=figures.encode(e.latency.histogram)
                )
                for key, e in sorted(self._endpoints.items())
            },
            timeline=(*self._rows, self._freeze(row)),
            saves=dict(self._saves),
            profiles={
                uuid: ProfileProgress(
                    applied=dict(p.applied),
                    failed=dict(p.failed),
                    deferred=frozenset(p.deferred),
                    seen=frozenset(p.seen),
                )
                for uuid, p in self._progress.items()
            },
            generator=GeneratorSnapshot(
                cpu_s=round(usage.cpu_s - self._cpu_at_start, 3),
                rss_mb=round(usage.rss_mb, 1),
                send_lag_hdr=figures.encode(self._send_lag),
                lateness_hdr=figures.encode(self._lateness.histogram),
                saturated=is_saturated(self._send_lag, self._lateness.histogram),
            ),
            events_queued=self._events_queued,
            cancelled=self._cancelled,
        )

    # -- internals

    def _scenario_s(self) -> float:
        return (self._clock() - self._origin) * self._scale

    def _current_row(self) -> _Row:
        """The row of this second; closing the earlier ones (empty seconds get rows too)."""
        second = max(0, int(self._clock() - self._origin))
        row = self._row
        if second <= row.t:
            return row
        self._rows.append(self._freeze(row))
        self._last = (row.requests, figures.percentile_ms(row.latency.histogram, 99.0))
        self._rows.extend(
            SecondSnapshot(t=t, requests=0, errors=0, websockets=self._websockets, hdr=_EMPTY_ROW)
            for t in range(row.t + 1, second)
        )
        if second > row.t + 1:
            self._last = (0, None)
        row.latency.reset()
        row.t, row.requests, row.errors, row.websockets = second, 0, 0, self._websockets
        return row

    @staticmethod
    def _freeze(row: _Row) -> SecondSnapshot:
        return SecondSnapshot(
            t=row.t,
            requests=row.requests,
            errors=row.errors,
            websockets=row.websockets,
            hdr=figures.encode(row.latency.histogram),
        )


def _live_profile(uuid: str, save: ProfileSave | None, p: _Progress | None) -> LiveProfile:
    return LiveProfile(
        uuid=uuid,
        name=save.name if save else uuid,
        saved_at_s=save.at_s if save else None,
        applied=len(p.applied) if p else 0,
        failed=sum(1 for s in p.failed if s not in p.applied) if p else 0,  # O(failed)
        deferred=len(p.deferred) if p else 0,
        seen=len(p.seen) if p else 0,
    )


_EMPTY_ROW = figures.encode(figures.new_histogram(figures.ROW_DIGITS))
