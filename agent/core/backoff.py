"""Retry delays: exponential backoff with full jitter, honouring Retry-After (pure)."""

from __future__ import annotations

from agent.core.rng import RandomSource

BASE_S = 1.0
CAP_S = 300.0


def next_delay(
    attempt: int,
    retry_after: float | None,
    rng: RandomSource,
    *,
    base: float = BASE_S,
    cap: float = CAP_S,
) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]; a Retry-After from the server
    is a floor, with up to 10% jitter on top so that devices told the same value do not return
    in lockstep.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after + rng.uniform(0, retry_after * 0.1))
    return delay


def with_jitter(interval: float, rng: RandomSource, spread: float = 0.1) -> float:
    """A check-in interval spread by +-`spread` so that a fleet does not synchronise."""
    return max(1.0, interval * rng.uniform(1 - spread, 1 + spread))
