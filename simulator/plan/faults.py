"""Faults between the simulated devices and the target: what each is, and what it does to one
request (pure; `simulator.faulty` is the transport that carries the verdicts out).

A scenario's `[[faults]]` become `Fault`s: each acts from `start_s` to `end_s` (scenario seconds
from the run's start; `end_s` inf: to the end) on the devices of `kinds` (None: every kind) and
on the requests named in `endpoints` (the agent's request names, `checkin`, `profiles`,
`events`, ..., plus `download` and `push`; None: every request). What each type does:

- `latency`: the request leaves `latency_s` (plus uniform 0..`jitter_s`) late: a slow network
  or a slow server as the device sees it; the wait counts in the measured latency.
- `outage`: nothing reaches the target: every request and push handshake is refused as a closed
  port would refuse it (the agent sees a TransportError).
- `refused`: with `probability`, a request is refused that way (DNS-like failures, connection
  refused).
- `drop`: with `probability`, the request reaches the target and the answer is lost (the
  connection drops before it arrives): what the server did stands, and the agent must not do
  it twice (event ids, registrations).
- `reset`: with `probability`, the connection is reset mid-answer: a JSON answer is lost as in
  `drop`; a download stops after `at_fraction` of the file (what arrived stays: the agent
  resumes it with Range).
- `truncate`: with `probability`, a download ends after `at_fraction` of the file (the body
  ends early; the agent sees an incomplete payload and resumes).
- `status`: with `probability`, the target answers `status` (429, 500, 502, 503, ...) with the
  error envelope and, if `retry_after_s` is given, `Retry-After`; the target is not contacted.
- `bandwidth`: downloads take at least their size / `bytes_per_s` (each device its own link).
- `clock_jump`: at `start_s` the kinds' wall clocks jump by `jump_s` (cumulative; negative:
  back); monotonic time and waits are untouched, as on a device whose RTC is reset.

Several faults may act at once: latencies add up, the strongest refusal wins (outage, then
refused, then status), and a download is cut at the smallest fraction that draws it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class FaultType(StrEnum):
    LATENCY = "latency"
    OUTAGE = "outage"
    REFUSED = "refused"
    DROP = "drop"
    RESET = "reset"
    TRUNCATE = "truncate"
    STATUS = "status"
    BANDWIDTH = "bandwidth"
    CLOCK_JUMP = "clock_jump"


DOWNLOAD, PUSH = "download", "push"  # endpoint names of downloads and push handshakes
ENVELOPE_CODES = {429: 42900, 500: 50000, 502: 50200, 503: 50300, 504: 50400}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault of a scenario (see the module docstring for what each type does)."""

    type: FaultType
    start_s: float
    end_s: float = math.inf
    kinds: frozenset[str] | None = None
    endpoints: frozenset[str] | None = None
    probability: float = 1.0
    latency_s: float = 0.0
    jitter_s: float = 0.0
    status: int = 503
    retry_after_s: float | None = None
    at_fraction: float = 0.5
    bytes_per_s: float = 0.0
    jump_s: float = 0.0

    def hits(self, kind: str, endpoint: str, t: float) -> bool:
        """Whether this fault acts on `kind`'s `endpoint` request at scenario time `t`."""
        return (
            self.start_s <= t < self.end_s
            and (self.kinds is None or kind in self.kinds)
            and (self.endpoints is None or endpoint in self.endpoints)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": str(self.type),
            "start_s": self.start_s,
            "end_s": None if math.isinf(self.end_s) else self.end_s,
            "kinds": None if self.kinds is None else sorted(self.kinds),
            "endpoints": None if self.endpoints is None else sorted(self.endpoints),
            "probability": self.probability,
            "latency_s": self.latency_s,
            "jitter_s": self.jitter_s,
            "status": self.status,
            "retry_after_s": self.retry_after_s,
            "at_fraction": self.at_fraction,
            "bytes_per_s": self.bytes_per_s,
            "jump_s": self.jump_s,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What happens to one request."""

    delay_s: float = 0.0
    refuse: str | None = None  # why it never reaches the target
    status: int | None = None  # answered by the fault with this status
    retry_after_s: float | None = None
    drop_answer: str | None = None  # it reaches the target; the answer is lost (why)
    cut_at: float | None = None  # a download stops after this fraction of the file
    bytes_per_s: float | None = None

    @property
    def passes(self) -> bool:
        """Nothing to do: the request goes as it is."""
        return self == PASS


PASS = Verdict()


def acting(faults: Iterable[Fault], kind: str, endpoint: str, t: float) -> list[Fault]:
    return [f for f in faults if f.type is not FaultType.CLOCK_JUMP and f.hits(kind, endpoint, t)]


def verdict(faults: Sequence[Fault], endpoint: str, draw: Callable[[], float]) -> Verdict:
    """The verdict for one request hit by `faults` (those `acting` now); `draw()` is uniform in
    [0, 1) (the device's own rng: a seeded run replays)."""
    if not faults:
        return PASS
    delay = 0.0
    refuse: str | None = None
    status: Fault | None = None
    drop: str | None = None
    cut: float | None = None
    rate: float | None = None
    download = endpoint == DOWNLOAD
    for fault in faults:
        kind = fault.type
        if kind is FaultType.LATENCY:
            delay += fault.latency_s + (draw() * fault.jitter_s if fault.jitter_s else 0.0)
        elif kind is FaultType.OUTAGE:
            refuse = "connection refused (simulated outage)"
        elif kind is FaultType.BANDWIDTH and download:
            rate = fault.bytes_per_s if rate is None else min(rate, fault.bytes_per_s)
        elif kind is FaultType.BANDWIDTH or draw() >= fault.probability:
            continue
        elif kind is FaultType.REFUSED:
            refuse = refuse or "connection refused (simulated fault)"
        elif kind is FaultType.STATUS:
            status = status or fault
        elif kind is FaultType.DROP or (kind is FaultType.RESET and not download):
            drop = drop or f"connection {'reset' if kind is FaultType.RESET else 'dropped'}"
        elif download:  # reset or truncate of a download
            cut = fault.at_fraction if cut is None else min(cut, fault.at_fraction)
    if refuse is not None:
        return Verdict(delay_s=delay, refuse=refuse)
    if status is not None:
        return Verdict(delay_s=delay, status=status.status, retry_after_s=status.retry_after_s)
    return Verdict(delay_s=delay, drop_answer=drop, cut_at=cut, bytes_per_s=rate)


def clock_offset(faults: Iterable[Fault], kind: str, t: float) -> float:
    """How far `kind`'s wall clock has jumped by scenario time `t` (the sum of its jumps)."""
    return sum(
        f.jump_s
        for f in faults
        if f.type is FaultType.CLOCK_JUMP
        and f.start_s <= t
        and (f.kinds is None or kind in f.kinds)
    )


def error_body(status: int, retry_after_s: float | None) -> bytes:
    """The error envelope a fault answers with (§1 of the protocol)."""
    code = ENVELOPE_CODES.get(status, status * 100)
    message = f"simulated fault: HTTP {status}"
    if retry_after_s is not None:
        message += f", retry after {retry_after_s:g} s"
    return json.dumps(
        {"uq": "fault", "result": False, "code": code, "message": message, "build": "midm-sim"}
    ).encode()
