"""A scenario as typed values: what simulator/scenario.py validates a TOML file into (pure).

`expand(scenario, seed)` turns one into a Plan: it splits the fleet into devices, gives each an
intended arrival time and a seed, and resolves the timeline's device selections into serials.
Kinds keep the scenario's order; the timeline is ordered by `at_s` (ties keep the file's order).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from simulator.plan.faults import Fault
from simulator.plan.model import AdminAction, DeviceKind, Expectation


class ArrivalProcess(StrEnum):
    POISSON = "poisson"  # exponential gaps around the rate (an open model's usual arrivals)
    EVEN = "even"  # evenly spaced at the rate


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """`duration_s` seconds over which the arrival rate goes linearly from `rate_from` to
    `rate_to` devices per second. After the last phase its `rate_to` holds."""

    duration_s: float
    rate_from: float
    rate_to: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalSpec:
    process: ArrivalProcess
    start_s: float
    phases: tuple[Phase, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class KindSpec:
    """A kind of device and how many: `count` devices, or a `share` of the fleet's total.
    `serial_prefix`: its devices are numbered PREFIX + their number within the kind (None: the
    scenario's prefix + the device's index in the fleet)."""

    kind: DeviceKind
    count: int | None = None
    share: float | None = None
    serial_prefix: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A validated scenario. `devices` is the fleet's total (required when a kind has a share;
    otherwise the sum of the counts). The timeline's `resave_devices` actions still hold their
    selection (`kind`, `count`, `share`, `serials`); expand resolves them into `serials`."""

    name: str
    description: str
    source: str  # the file, as given
    sha256: str  # of the file's bytes
    duration_s: float
    time_scale: float
    seed: int
    devices: int
    serial_prefix: str
    kinds: tuple[KindSpec, ...]
    arrival: ArrivalSpec
    timeline: tuple[AdminAction, ...]
    expectations: tuple[Expectation, ...]
    faults: tuple[Fault, ...] = ()
