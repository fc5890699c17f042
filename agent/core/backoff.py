"""Retry delays after a failed exchange with the server, and the check-in spread (pure).

Theory of operation (`next_delay`): a fleet of N devices checking in every T seconds sends the
server N/T requests a second. When the server (or the network) is gone, each device retries on
its own schedule; when it comes back, the devices come back at the rate their retries were
going at. If a device retries on average no more often than once per T, its retries are a
renewal process with a mean gap of at least T, and the chance that its first retry after the
end of an outage lands in any given second is at most 1/T: the fleet comes back at no more
than N/T, the steady rate (each device then adds what one check-in brings: its push channel,
its queued events). Exponential backoff with full jitter, uniform(0, 1, 2, 4 ... s), does not
have that property: during a one-minute outage most devices are still in their short first
steps and retry every few seconds, and the fleet came back at about 8x the steady rate
(scenarios/herd-after-outage.toml). So, when the device could not reach the server:

- the first retry is quick, uniform(0, base): most failures are one-offs (a dropped
  connection), and one quick retry costs each device one request per failure;
- every later retry waits uniform(0.5, 1.5) x `ceiling()`, whose mean is the ceiling: the
  check-in interval, or the exponential step base * 2**(attempt - 1) capped at `cap` when that
  is longer (a long outage is retried less and less often). The interval itself is never cut
  to `cap`: a device told to check in hourly retries about hourly, no later than it would have
  spoken anyway. The jitter is +-50 %, not full: full jitter over [0, T] averages T/2, twice
  the steady rate. The price, decided: a device that met a short outage (a restart of a few
  seconds) and failed its quick retry too comes back about a check-in interval later, as if it
  had just checked in;
- a Retry-After from the server is a floor, with up to 10 % jitter on top, so that devices
  told the same value do not return in lockstep.

When the server answered the failed cycle's check-in (`reached`: a download dropped part-way,
an answer lost after it), the failure is not an outage: the device is not one of those an
outage holds back, and waiting an interval would only slow it (a rollout over a poor link,
scenarios/download-resume.toml). It is retried with full jitter over base * 2**(attempt - 1),
capped at the interval: quick while it is a one-off, once an interval if it persists.

The push channel (`push_delay`) reconnects by the same rule over twice the check-in interval:
while the server is down the check-in loop probes it, and the first check-in that succeeds
brings the channel back at once (agent.runtime.agent); the channel's own timer is the fallback.
On a timer as short as the check-ins' the channels came back on their own beside the
check-ins, a second herd: in a model of herd-after-outage.toml at 300 devices the ratio was
2.7x on average and over 3x in 8 % of the seeds, against 2.4x and 0.2 % this way.
"""

from __future__ import annotations

from agent.core.rng import RandomSource

BASE_S = 1.0
CAP_S = 300.0
RETRY_AFTER_JITTER = 0.1
PUSH_INTERVALS = 2.0  # the push channel's own retries: over this many check-in intervals


def ceiling(attempt: int, *, interval: float, base: float = BASE_S, cap: float = CAP_S) -> float:
    """The mean wait before retry number `attempt` (1 for the first) after the server could
    not be reached: `base` for the quick first one (uniform(0, base)), then the longer of the
    check-in `interval` and the exponential step capped at `cap`. Never decreases with
    `attempt` while `interval` >= `base`."""
    if attempt <= 1:
        return base
    return max(interval, min(cap, base * 2.0 ** (attempt - 1)))


def next_delay(
    attempt: int,
    retry_after: float | None,
    rng: RandomSource,
    *,
    interval: float,
    reached: bool = False,
    base: float = BASE_S,
    cap: float = CAP_S,
) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first) of a device whose
    check-in interval is `interval` (see the module docstring). Not `reached`: uniform(0, base)
    for the first, uniform(0.5, 1.5) x `ceiling()` for the others. `reached` (the server
    answered the cycle's check-in): uniform(0, min(interval, base * 2**(attempt - 1))). Never
    under `retry_after` (plus up to 10 %)."""
    if reached:
        delay = rng.uniform(0.0, min(interval, base * 2.0 ** max(0, attempt - 1)))
    elif attempt <= 1:
        delay = rng.uniform(0.0, base)
    else:
        delay = rng.uniform(0.5, 1.5) * ceiling(attempt, interval=interval, base=base, cap=cap)
    if retry_after is not None:
        delay = max(delay, retry_after + rng.uniform(0.0, retry_after * RETRY_AFTER_JITTER))
    return delay


def push_delay(attempt: int, rng: RandomSource, *, interval: float) -> float:
    """Seconds before the push channel's reconnect number `attempt` (1 for the first) of a
    device whose check-in interval is `interval`: quick for the first, then about two check-in
    intervals (see the module docstring; a check-in that succeeds cuts it short)."""
    return next_delay(attempt, None, rng, interval=PUSH_INTERVALS * interval)


def with_jitter(interval: float, rng: RandomSource, spread: float = 0.1) -> float:
    """A check-in interval spread by +-`spread` so that a fleet does not synchronise."""
    return max(1.0, interval * rng.uniform(1 - spread, 1 + spread))
