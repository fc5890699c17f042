"""Rate limits as pure decisions: token buckets by key, who a client is, and log-line throttling.

Theory of operation. A bucket holds up to `burst` tokens and gains `per_s` tokens a second,
computed when it is next touched (a clock that steps back adds nothing; it never drains one).
`take(key, now)` spends a token, or says how many seconds until one is there (spending nothing);
`give_back` returns a token that bought nothing (a right password, a request another limit
refused). Memory is bounded: at most `max_keys` buckets are kept and the least recently touched
is forgotten first. A forgotten bucket starts full again, so eviction only ever errs on the
lenient side, and touching 10,000 other keys to reset one costs an attacker its own address's
tokens first. Nothing here reads a clock: the caller passes `now` in seconds.

Client addresses: the TCP peer, unless that peer is a configured trusted proxy; only then is
`X-Forwarded-For` read, from the right, skipping trusted hops (entries left of the first untrusted
hop were written by the client and prove nothing). IPv6 clients are keyed by their /64, which one
host can rotate through at will.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per key (`burst` tokens, `per_s` refill), at most `max_keys` of them."""

    def __init__(self, *, burst: int, per_s: float, max_keys: int) -> None:
        if burst < 1 or per_s <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be >= 1 and per_s > 0")
        self.burst, self.per_s, self.max_keys = burst, per_s, max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_s)
        bucket.updated = now
        return bucket

    def take(self, key: str, now: float) -> float:
        """Spend one of `key`'s tokens: 0.0 if there was one, else the seconds until there is
        one (and nothing is spent)."""
        bucket = self._refilled(key, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.per_s

    def give_back(self, key: str, now: float) -> None:
        """Return a token `take` spent (never above `burst`)."""
        bucket = self._refilled(key, now)
        bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)


def retry_after_s(wait_s: float) -> int:
    """A `Retry-After` value for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s))


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks (`10.0.0.1`, `10.0.0.0/8`, `::1`); ValueError names a bad one."""
    found: list[Network] = []
    for text in texts:
        try:
            found.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from None
    return tuple(found)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: Sequence[Network]
) -> bool:
    return any(address in network for network in proxies)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[Network]
) -> str:
    """Who the client is: the TCP `peer`, or, when the peer is a trusted proxy, the rightmost
    `X-Forwarded-For` hop that is not one (`forwarded_for`: every such header's value, in order).
    An unparsable hop, or none left, leaves the last trusted address."""
    current = _address(peer) if peer else None
    if current is None:
        return peer or "unknown"
    if not proxies:
        return str(current)
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    while _trusted(current, proxies) and hops:
        previous = _address(hops.pop())
        if previous is None:
            break
        current = previous
    return str(current)


def limit_key(address: str) -> str:
    """The key a client's requests are counted under: its IPv4 address, or its IPv6 /64."""
    parsed = _address(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class LogThrottle:
    """At most one log line per `interval_s` for one kind of repeated event.

    `due(now)` is None while a line was written less than `interval_s` ago (the event is counted),
    else the number of events since the last line that were not written (the caller writes one
    line carrying that count)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: float | None = None
        self._suppressed = 0

    def due(self, now: float) -> int | None:
        if self._last is not None and now - self._last < self.interval_s and now >= self._last:
            self._suppressed += 1
            return None
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
