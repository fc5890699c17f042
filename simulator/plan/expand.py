"""`expand(scenario, seed) -> Plan`: the fleet, each device's arrival and seed, the timeline (pure).

Theory of operation:
- Quotas: each kind's part of the fleet is its count (or share of the total) scaled to the total
  asked for (`devices`, default the scenario's), rounded by largest remainder so they add up.
- Kinds are dealt to device indexes by a seeded shuffle, so kinds mix over the arrival.
- Arrivals (open model): the rate r(t) is piecewise linear (phases; the last rate holds after
  them). Device i arrives when the expected number of arrivals, the integral of r, reaches u_i:
  u_i = i (even) or the sum of i+1 exponential gaps of mean 1 (poisson). Arrivals never wait
  for answers: each is an intended time.
- Serials: the scenario's prefix + the device's index, or (a kind with its own serial_prefix)
  that prefix + the device's number within its kind: two kinds given one prefix share serials.
- Seeds: device i's seed is the i-th draw of a SplitMix64 stream of the run's seed, whatever the
  fleet's size. Re-save selections are drawn from the devices arrived by then (others if short).
Same scenario and seed give the same Plan and plan_hash(); nothing here reads a clock or a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from simulator.plan.model import ActionKind, AdminAction, DeviceKind, Plan, PlannedDevice
from simulator.plan.spec import ArrivalProcess, ArrivalSpec, Phase, Scenario

_MASK = (1 << 64) - 1
_DEVICE_STREAM = 0x6A09E667F3BCC909
_KIND_STREAM = 0xBB67AE8584CAA73B
_ARRIVAL_STREAM = 0x3C6EF372FE94F82B
_RESAVE_STREAM = 0xA54FF53A5F1D36F1


class SplitMix64:
    """A tiny deterministic generator (same numbers on every platform and Python version)."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK

    def next64(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        """A float in [0, 1)."""
        return (self.next64() >> 11) * 2.0**-53

    def below(self, n: int) -> int:
        """An int in [0, n) (n > 0; the modulo bias is below 2**-40 for any fleet size)."""
        return self.next64() % n


def quotas(weights: Sequence[float], total: int) -> list[int]:
    """`total` split in proportion to `weights` by largest remainder (ties: the earlier kind)."""
    whole = sum(weights)
    if total <= 0 or whole <= 0:
        return [0] * len(weights)
    exact = [w * total / whole for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def kind_weights(scenario: Scenario) -> list[float]:
    """Each kind's weight: its count, or its share of what the counts leave of the total."""
    counted = sum(k.count or 0 for k in scenario.kinds)
    rest = max(scenario.devices - counted, 0)
    return [
        float(k.count) if k.count is not None else (k.share or 0.0) * rest for k in scenario.kinds
    ]


def time_of(arrival: ArrivalSpec, expected: float) -> float:
    """When the expected number of arrivals reaches `expected` (inf if it never does)."""
    t, reached = arrival.start_s, 0.0
    last_rate = 0.0
    for phase in arrival.phases:
        a, b, d = phase.rate_from, phase.rate_to, phase.duration_s
        last_rate = b
        if d <= 0:
            continue
        inside = d * (a + b) / 2
        if expected <= reached + inside:
            return t + _within(a, b, d, expected - reached)
        t, reached = t + d, reached + inside
    if last_rate <= 0:
        return math.inf
    return t + (expected - reached) / last_rate


def _within(a: float, b: float, d: float, n: float) -> float:
    """x in [0, d] with a*x + (b-a)/(2d)*x**2 = n (the stable root of the quadratic)."""
    if n <= 0:
        return 0.0
    k = (b - a) / (2 * d)
    root = math.sqrt(max(a * a + 4 * k * n, 0.0))
    denominator = a + root
    return min(2 * n / denominator, d) if denominator > 0 else d


def arrivals(arrival: ArrivalSpec, n: int, seed: int) -> list[float]:
    """The intended arrival times of devices 0..n-1 (non-decreasing, microsecond rounded)."""
    rng = SplitMix64(seed ^ _ARRIVAL_STREAM)
    times: list[float] = []
    expected = 0.0
    for i in range(n):
        if arrival.process is ArrivalProcess.POISSON:
            expected += -math.log(1.0 - rng.random())
        else:
            expected = float(i)
        times.append(round(time_of(arrival, expected), 6))
    return times


def _kinds_dealt(counts: Sequence[int], names: Sequence[str], seed: int) -> list[str]:
    dealt = [name for name, count in zip(names, counts, strict=True) for _ in range(count)]
    rng = SplitMix64(seed ^ _KIND_STREAM)
    for i in range(len(dealt) - 1, 0, -1):  # Fisher-Yates
        j = rng.below(i + 1)
        dealt[i], dealt[j] = dealt[j], dealt[i]
    return dealt


def _resave(
    action: AdminAction, number: int, devices: Sequence[PlannedDevice], seed: int
) -> AdminAction:
    args = action.args
    known = {d.serial for d in devices}
    serials = [s for s in args.get("serials") or () if s in known]
    kind = args.get("kind")
    pool = [d for d in devices if kind is None or d.kind == kind]
    count = args.get("count")
    share = args.get("share")
    wanted = count if count is not None else round((share or 0.0) * len(pool))
    if wanted:
        arrived = [d for d in pool if d.arrive_s <= action.at_s]
        later = [d for d in pool if d.arrive_s > action.at_s]
        rng = SplitMix64(seed ^ _RESAVE_STREAM ^ number)
        for group in (arrived, later):
            for i in range(len(group) - 1, 0, -1):
                j = rng.below(i + 1)
                group[i], group[j] = group[j], group[i]
        chosen = sorted((arrived + later)[: min(wanted, len(pool))], key=lambda d: d.index)
        serials += [d.serial for d in chosen if d.serial not in serials]
    return AdminAction(
        at_s=action.at_s,
        action=action.action,
        args=MappingProxyType({"serials": tuple(serials)}),
    )


def _serials(scenario: Scenario, dealt: Sequence[str], width: int) -> list[str]:
    """Device i's serial: the scenario's prefix + i, or its kind's prefix + its number within
    the kind (two kinds with one prefix share serials: a fleet with duplicate serials)."""
    own = {k.kind.name: k.serial_prefix for k in scenario.kinds}
    numbers: dict[str, int] = {}
    serials = []
    for i, kind in enumerate(dealt):
        prefix = own.get(kind)
        if prefix is None:
            serials.append(f"{scenario.serial_prefix}{i:0{width}d}")
            continue
        n = numbers.get(kind, 0)
        numbers[kind] = n + 1
        serials.append(f"{prefix}{n:0{width}d}")
    return serials


def expand(
    scenario: Scenario,
    seed: int,
    *,
    devices: int | None = None,
    duration: float | None = None,
    time_scale: float | None = None,
) -> Plan:
    """The plan of `scenario` with `seed`; `devices`/`duration`/`time_scale` override the
    scenario's (the --devices, --duration and --time-scale flags)."""
    total = scenario.devices if devices is None else devices
    names = [k.kind.name for k in scenario.kinds]
    counts = quotas(kind_weights(scenario), total)
    dealt = _kinds_dealt(counts, names, seed)
    times = arrivals(scenario.arrival, len(dealt), seed)
    seeds = SplitMix64(seed ^ _DEVICE_STREAM)
    width = max(6, len(str(max(len(dealt) - 1, 0))))
    planned = tuple(
        PlannedDevice(index=i, serial=serial, kind=kind, arrive_s=times[i], seed=seeds.next64())
        for i, (kind, serial) in enumerate(
            zip(dealt, _serials(scenario, dealt, width), strict=True)
        )
    )
    timeline = tuple(
        _resave(a, n, planned, seed) if a.action is ActionKind.RESAVE_DEVICES else a
        for n, a in enumerate(scenario.timeline)
    )
    kinds: Mapping[str, DeviceKind] = MappingProxyType(
        {k.kind.name: k.kind for k in scenario.kinds}
    )
    return Plan(
        scenario=scenario.name,
        description=scenario.description,
        scenario_sha256=scenario.sha256,
        seed=seed,
        duration_s=scenario.duration_s if duration is None else duration,
        time_scale=scenario.time_scale if time_scale is None else time_scale,
        kinds=kinds,
        devices=planned,
        timeline=timeline,
        expectations=scenario.expectations,
        faults=scenario.faults,
    )


def phases_of(rate: float, ramp_s: float) -> tuple[Phase, ...]:
    """The shorthand `rate` (+ `ramp_s`): a linear ramp from 0, then the rate."""
    if ramp_s > 0:
        return (Phase(duration_s=ramp_s, rate_from=0.0, rate_to=rate),)
    return (Phase(duration_s=0.0, rate_from=rate, rate_to=rate),)


def freeze(value: Any) -> Any:
    """JSON-like values made immutable: dicts -> MappingProxyType, lists -> tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value
