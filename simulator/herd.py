"""The thundering herd after an outage, read off a run's timeline (pure).

When a target comes back after an outage, every device that failed meanwhile comes back too;
the agents' retry rule (agent/core/backoff.py: no more often than the check-in interval after
one quick retry) is meant to spread them out. `herd()` measures how well it did, for
each `outage` fault of the plan that ends before the run does:

- `steady_rps`: the mean rate of served requests (requests minus errors) over the timeline's
  whole seconds in the check-in interval before the outage's start (the longest interval of the
  kinds it hits; from the last planned arrival if that is later): a whole interval, so every
  device's check-in is in it once, however the fleet's check-ins bunch up;
- `peak_rps`: the highest rate of served requests in a bucket of at least BUCKET_S scenario
  seconds (whole timeline rows), from the outage's end for one recovery window (that interval,
  at least RECOVERY_MIN_S: the backoff's ceiling after a minute of failures is about that long);
- `ratio`: peak / steady.

The report's `herd` has the worst outage's figures (the highest ratio) and each outage's under
`outages`. Rates are per real second of the timeline (one row a real second: at time scale X a
row holds X scenario seconds); both are measured the same way, so the ratio does not depend on
X, and the bucket (`bucket_s`, in the figures) keeps the peak's resolution about the same at
any X. A bucket that starts in the outage's last second counts that second's few served
requests too (it understates the peak a little, never overstates it). No steady second before
the outage, none after it, or no request in the steady seconds: no ratio for that outage (an
expectation that reads it is unknown, and fails).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_CHECKIN_S = 60.0  # the agent's interval when a kind names none (simulator.fleet's)
RECOVERY_MIN_S = 60.0
BUCKET_S = 5.0  # the peak's resolution, scenario seconds (at least one timeline row)


def _served(row: Mapping[str, Any]) -> float:
    return float(row.get("rps") or 0) - float(row.get("errors") or 0)


def _interval(kinds: Mapping[str, Any], names: Sequence[str] | None) -> float:
    chosen = [k for n, k in kinds.items() if names is None or n in names]
    intervals = [float(k.get("checkin_interval_s") or DEFAULT_CHECKIN_S) for k in chosen]
    return max(intervals, default=DEFAULT_CHECKIN_S)


def herd(
    plan: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]], time_scale: float
) -> dict[str, Any] | None:
    """The herd figures of a report (`plan`: report.json's scenario.plan, `timeline` its rows);
    None when the plan has no outage that ends within the run."""
    duration = float(plan.get("duration_s") or 0.0)
    outages = [
        f
        for f in plan.get("faults") or ()
        if f.get("type") == "outage" and f.get("end_s") is not None and f["end_s"] < duration
    ]
    if not outages:
        return None
    kinds = plan.get("kinds") or {}
    arrivals = [float(d[3]) for d in plan.get("devices") or ()]
    last_arrival = max(arrivals, default=0.0)
    rows = {int(r["t"]): r for r in timeline}
    found = []
    for outage in sorted(outages, key=lambda f: float(f["start_s"])):
        figures = _one(outage, kinds, last_arrival, rows, time_scale, duration)
        if figures is not None:
            found.append(figures)
    if not found:
        return {"peak_rps": None, "steady_rps": None, "ratio": None, "outages": []}
    judged = [f for f in found if f["ratio"] is not None]
    worst = max(judged, key=lambda f: float(f["ratio"])) if judged else found[0]
    return {**{k: worst[k] for k in ("peak_rps", "steady_rps", "ratio")}, "outages": found}


def _one(
    outage: Mapping[str, Any],
    kinds: Mapping[str, Any],
    last_arrival: float,
    rows: Mapping[int, Mapping[str, Any]],
    scale: float,
    duration: float,
) -> dict[str, Any] | None:
    names = outage.get("kinds")
    interval = _interval(kinds, names)
    start, end = float(outage["start_s"]), float(outage["end_s"])
    since = max(start - interval, last_arrival)
    # whole real seconds [t, t+1) inside [since, start)
    steady = [
        _served(rows[t])
        for t in range(math.ceil(since / scale), math.floor(start / scale))
        if t in rows
    ]
    until = min(end + max(interval, RECOVERY_MIN_S), duration)
    width = max(1, math.ceil(BUCKET_S / scale - 1e-9))  # rows a bucket
    first, last = math.floor(end / scale), math.ceil(until / scale)
    buckets = []
    for b in range(first, last, width):
        present = [rows[t] for t in range(b, min(b + width, last)) if t in rows]
        if len(present) == width:  # a whole bucket only
            buckets.append(sum(_served(r) for r in present) / width)
    if not steady or not buckets:
        return None
    steady_rps = sum(steady) / len(steady)
    peak = max(buckets)
    return {
        "start_s": start,
        "end_s": end,
        "steady_from_s": round(since, 3),
        "recovery_s": round(until - end, 3),
        "bucket_s": width * scale,
        "steady_rps": round(steady_rps, 3),
        "peak_rps": round(peak, 3),
        "ratio": round(peak / steady_rps, 3) if steady_rps > 0 else None,
    }
