"""Shards of a plan (pure): which planned devices shard I of N runs, decided from the plan alone.

Rules [ours]:
- Every shard expands the whole plan (same scenario, seed and overrides: the same Plan and
  `plan_hash()`, which is how `midm-sim merge` knows the reports are of one run) and then keeps
  its part: device i (PlannedDevice.index, the arrival order) belongs to shard `i mod N`.
  Round-robin rather than contiguous ranges: arrivals are ordered by index, so every shard gets
  an even share of each second's arrivals and of each kind (kinds are dealt by a seeded shuffle),
  and the shards' sizes differ by at most one.
- The admin timeline is the run's, not a device's: shard 0 runs all of it (and saves the whole
  fleet in bulk); the other shards only run their devices (simulator/shards.py says why).
- `resaved(plan, serials, until_s)`: the serials of a shard that the timeline re-saved by
  `until_s` (scenario seconds): a shard that did not run the timeline settles those agents all
  the same before its consistency check.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from simulator.plan.model import ActionKind, Plan, PlannedDevice


class ShardError(ValueError):
    """A shard spec that is not I/N with 0 <= I < N."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Shard:
    """Shard `index` of `count` (0-based); Shard(index=0, count=1) is the whole run."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ShardError(f"{self.index}/{self.count}: the shard count must be at least 1")
        if not 0 <= self.index < self.count:
            raise ShardError(
                f"{self.index}/{self.count}: the index must be 0 to {self.count - 1} "
                f"(shards are numbered from 0)"
            )

    @property
    def whole(self) -> bool:
        """One shard of one: the whole run (no other shard to wait for or merge with)."""
        return self.count == 1

    @property
    def runs_timeline(self) -> bool:
        """Shard 0 runs the admin timeline and saves the fleet."""
        return self.index == 0

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, device: PlannedDevice) -> bool:
        return device.index % self.count == self.index


def parse_shard(text: str) -> Shard:
    """`I/N` (e.g. `0/3`) -> Shard(index=I, count=N); ShardError names what is wrong."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ShardError(f"{text!r} is not I/N (e.g. 0/3: shard 0 of 3)")
    return Shard(index=int(parts[0]), count=int(parts[1]))


def select(plan: Plan, shard: Shard) -> tuple[PlannedDevice, ...]:
    """The shard's devices, in the plan's (arrival) order."""
    if shard.whole:
        return plan.devices
    return tuple(d for d in plan.devices if shard.owns(d))


def shard_plan(plan: Plan, shard: Shard) -> Plan:
    """The plan with only the shard's devices (what its fleet runs); kinds, timeline and
    expectations stay the run's."""
    if shard.whole:
        return plan
    return dataclasses.replace(plan, devices=select(plan, shard))


def serials_digest(devices: Iterable[PlannedDevice]) -> str:
    """sha256 (hex) of the devices' serials, one a line in the given order: a shard's report
    names the devices it planned without listing them."""
    digest = hashlib.sha256()
    for device in devices:
        digest.update(device.serial.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def resaved(plan: Plan, serials: Collection[str], until_s: float) -> set[str]:
    """The `serials` that the plan's resave_devices actions at or before `until_s` name."""
    found: set[str] = set()
    for action in plan.timeline:
        if action.action is ActionKind.RESAVE_DEVICES and action.at_s <= until_s:
            found.update(s for s in action.args.get("serials") or () if s in serials)
    return found
