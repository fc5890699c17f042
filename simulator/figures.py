"""The simulator's measurement maths, as pure functions (no clock, no I/O): table-tested.

- Endpoint keys (§9) from the transport's exchange names, and error classes from how an exchange
  ended (HTTP status, or the transport's error name).
- HDR histograms (microseconds, exact to 3 significant digits, mergeable by adding counts) and the
  latency percentiles the report shows (milliseconds).
- Rollout convergence: from the times (seconds after the profile's save) at which devices applied
  it, the times by which 50/90/99 % of the scoped devices had, and the curve [[t, fraction]].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: longer values are recorded as one hour
DIGITS = 3  # significant digits of the report's histograms
ROW_DIGITS = 2  # the per-second rows: 1 % is enough for a p99 over time, and 7x smaller
CURVE_POINTS = 200  # a convergence curve keeps at most this many steps (the ends always)

ADMIN = "admin:"
DEVICE_ENDPOINTS = (
    "register",
    "challenge",
    "checkin",
    "apps",
    "profiles",
    "ota/next",
    "events",
    "ws",
    "file",
)
_KEYS = {
    "ota_next": "ota/next",
    "push": "ws",
    "download": "file",
    "login": ADMIN + "auth",  # /portal/V1/auth: the agent's own admin login
    "exists": ADMIN + "device/exists",
    "save": ADMIN + "device/save",
}


class ErrorClass(StrEnum):
    """How a failed exchange failed (report.json `requests.<endpoint>.errors` keys)."""

    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    TIMEOUT = "timeout"
    CONNECT = "connect"  # no connection was made (refused, DNS, unreachable)
    DISCONNECT = "disconnect"  # the connection dropped before the whole answer came
    OTHER = "other"  # any other transport error


_CONNECT = frozenset({"ConnectionRefusedError", "gaierror", "OSError", "InvalidURL"})
_DISCONNECT = frozenset(
    {
        "ServerDisconnectedError",
        "ConnectionResetError",
        "ClientPayloadError",
        "ClientOSError",
        "BrokenPipeError",
        "IncompleteReadError",
    }
)


def endpoint_key(name: str) -> str:
    """The report's endpoint key for an exchange name: "ota_next" -> "ota/next", "push" ->
    "ws", "download" -> "file", the agent's admin calls -> "admin:..."; others as they are."""
    return name if name.startswith(ADMIN) else _KEYS.get(name, name)


def is_admin(key: str) -> bool:
    return key.startswith(ADMIN)


def classify(status: int, error: str | None) -> ErrorClass | None:
    """The error class of an exchange that ended with `status` (0: no answer) and `error` (None,
    "timeout", or an exception's name); None when it succeeded."""
    if error == "timeout":
        return ErrorClass.TIMEOUT
    if status >= 500:
        return ErrorClass.HTTP_5XX
    if status >= 400:
        return ErrorClass.HTTP_4XX
    if error is None:
        return None
    if error in _CONNECT or error.startswith("ClientConnector"):
        return ErrorClass.CONNECT
    if error in _DISCONNECT:
        return ErrorClass.DISCONNECT
    return ErrorClass.OTHER


def new_histogram(digits: int = DIGITS) -> Any:
    """An empty HDR histogram of microseconds from 1 us to one hour."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def record_us(histogram: Any, seconds: float) -> None:
    """Record a duration (seconds), as whole microseconds clamped to the histogram's range."""
    histogram.record_value(min(HIGHEST_US, max(LOWEST_US, round(seconds * 1_000_000))))


class Recorder:
    """An HDR histogram of microseconds with a cheap `record()` for the hot path (every exchange
    feeds several histograms): a value is counted in a dict under the lowest value of its
    histogram bucket (what the histogram stores it as), and the counts are added to the histogram
    when it is read (`histogram`). Exact: the same counts, so the same percentiles, min, max and
    encoding, as recording each value; about 5x cheaper a value (no Python calls per value)."""

    __slots__ = ("_bits", "_histogram", "_pending")

    def __init__(self, digits: int = DIGITS) -> None:
        self._histogram = new_histogram(digits)
        if self._histogram.unit_magnitude != 0:  # LOWEST_US is 1: buckets in whole microseconds
            raise ValueError("Recorder needs histograms whose lowest trackable value is 1")
        # values of up to `_bits` bits are kept exactly; above, each extra bit halves resolution
        self._bits = self._histogram.sub_bucket_half_count_magnitude + 1
        self._pending: dict[int, int] = {}

    def record(self, seconds: float) -> None:
        """Record a duration (seconds), as whole microseconds clamped to the range."""
        value = round(seconds * 1_000_000)
        if value < LOWEST_US:
            value = LOWEST_US
        elif value > HIGHEST_US:
            value = HIGHEST_US
        shift = value.bit_length() - self._bits
        if shift > 0:
            value = value >> shift << shift
        pending = self._pending
        pending[value] = pending.get(value, 0) + 1

    @property
    def histogram(self) -> Any:
        """The histogram with every value recorded so far (read it; record through `record`)."""
        pending = self._pending
        if pending:
            add = self._histogram.record_value
            for value, count in pending.items():
                add(value, count)
            pending.clear()
        return self._histogram

    def reset(self) -> None:
        self._pending.clear()
        self._histogram.reset()


def record_us_corrected(histogram: Any, seconds: float, interval_s: float) -> None:
    """Record a lateness sampled every `interval_s`, corrected for coordinated omission: a stall
    of 900 ms swallowed 89 wake-ups of a 10 ms probe, and counts for them too (HdrHistogram's
    record_corrected_value: the samples 890, 880, ... 10 ms are added)."""
    value = min(HIGHEST_US, max(LOWEST_US, round(seconds * 1_000_000)))
    histogram.record_corrected_value(value, max(1, round(interval_s * 1_000_000)))


def encode(histogram: Any) -> str:
    """The HdrHistogram compressed base64 encoding (V2, as every HdrHistogram library reads)."""
    return str(histogram.encode().decode("ascii"))


def decode(text: str) -> Any:
    return HdrHistogram.decode(text)


def merged(encodings: Iterable[str], digits: int = DIGITS) -> Any:
    """One histogram holding the counts of all `encodings` (exact: counts are added)."""
    total = new_histogram(digits)
    for text in encodings:
        total.add(decode(text))
    return total


PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def latency_ms(histogram: Any) -> dict[str, float | None]:
    """{p50, p90, p99, p999, max} in milliseconds (3 decimals); None each when it is empty."""
    if histogram.get_total_count() == 0:
        return {key: None for key, _ in (*PERCENTILES, ("max", 0.0))}
    values: dict[str, float | None] = {
        key: _ms(histogram.get_value_at_percentile(p)) for key, p in PERCENTILES
    }
    values["max"] = _ms(histogram.get_max_value())
    return values


def percentile_ms(histogram: Any, percentile: float) -> float | None:
    if histogram.get_total_count() == 0:
        return None
    return _ms(histogram.get_value_at_percentile(percentile))


def _ms(microseconds: int) -> float:
    return round(microseconds / 1000, 3)


@dataclass(frozen=True, slots=True, kw_only=True)
class Convergence:
    """A profile's rollout over its scoped devices (times in seconds after its save)."""

    scoped: int
    applied: int
    failed: int
    deferred: int
    t50_s: float | None  # None: that share of the scoped devices never applied it
    t90_s: float | None
    t99_s: float | None
    curve: tuple[tuple[float, float], ...]  # [t, fraction applied], a step curve from (0, 0)

    @property
    def fraction(self) -> float | None:
        return None if self.scoped == 0 else self.applied / self.scoped

    def to_json(self) -> dict[str, Any]:
        return {
            "scoped": self.scoped,
            "applied": self.applied,
            "failed": self.failed,
            "deferred": self.deferred,
            "fraction": None if self.fraction is None else round(self.fraction, 6),
            "t50_s": self.t50_s,
            "t90_s": self.t90_s,
            "t99_s": self.t99_s,
            "curve": [list(point) for point in self.curve],
        }


def time_to(percent: int, times: Sequence[float], scoped: int) -> float | None:
    """When `percent` % of the `scoped` devices had applied (`times` sorted): the time of the
    ceil(percent * scoped / 100)-th application; None when there were not that many."""
    if scoped <= 0:
        return None
    needed = max(1, -(-percent * scoped // 100))  # integer ceil: 0.9 * 10 is 9, not 10
    return times[needed - 1] if needed <= len(times) else None


def convergence(
    applied_after_s: Iterable[float], *, scoped: int, failed: int = 0, deferred: int = 0
) -> Convergence:
    """The convergence figures of one profile from each applying device's time after the save
    (negative times, an event counted before the save was seen, count as 0)."""
    times = sorted(round(max(0.0, t), 3) for t in applied_after_s)
    scoped = max(scoped, len(times))
    return Convergence(
        scoped=scoped,
        applied=len(times),
        failed=failed,
        deferred=deferred,
        t50_s=time_to(50, times, scoped),
        t90_s=time_to(90, times, scoped),
        t99_s=time_to(99, times, scoped),
        curve=curve(times, scoped),
    )


def curve(times: Sequence[float], scoped: int) -> tuple[tuple[float, float], ...]:
    """The step curve [t, fraction applied by t] of sorted `times`: one point per distinct time
    (the last device at that time), thinned to CURVE_POINTS evenly over the devices."""
    if scoped <= 0:
        return ()
    steps: list[tuple[float, int]] = []
    for count, t in enumerate(times, start=1):
        if steps and steps[-1][0] == t:
            steps[-1] = (t, count)
        else:
            steps.append((t, count))
    if len(steps) > CURVE_POINTS:
        last = len(steps) - 1
        keep = sorted({round(i * last / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)})
        steps = [steps[i] for i in keep]
    return ((0.0, 0.0), *((t, round(n / scoped, 6)) for t, n in steps))


def error_rate(errors: int, requests: int) -> float:
    return 0.0 if requests == 0 else errors / requests


def sum_counts(mappings: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Key-wise sums of counters."""
    total: dict[str, int] = {}
    for mapping in mappings:
        for key, n in mapping.items():
            total[key] = total.get(key, 0) + n
    return total
