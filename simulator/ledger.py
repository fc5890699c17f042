"""Nothing lost, nothing twice: every event each agent queued, checked against the server.

`EventLedger` is told of every event an agent queues (the fleet's event sink: the same call
that feeds convergence) and keeps its id per device. At the end, `reconcile()` (pure) compares
that with the server's record of this run's devices (`logs/find`, every page) and with what is
still queued in the agents' outboxes:

- `lost`: queued, not on the server and no longer queued anywhere: the agent dropped it (the
  outbox acknowledged it without the server storing it, or forgot it).
- `pending`: still in an agent's outbox at the end (the target was unreachable when the run
  stopped, say): not lost, and reported apart.
- `duplicated`: an id the server holds more than once, or an event of one of this run's devices
  that no agent queued (a resend under a new id, or an event the server made up).

`violations` lists the first `KEPT` of each, with the serial and the id, for the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KEPT = 20  # violations of each kind the report quotes


class EventLedger:
    """The ids of the events each agent queued, in order (serial -> ids)."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}

    def __call__(self, serial: str, event: Mapping[str, Any]) -> None:
        event_id = event.get("id")
        if isinstance(event_id, str) and event_id:
            self._ids.setdefault(serial, []).append(event_id)

    def queued(self) -> Mapping[str, Sequence[str]]:
        return self._ids

    def count(self) -> int:
        return sum(len(ids) for ids in self._ids.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsCheck:
    """How the agents' events ended up (see the module docstring)."""

    queued: int
    on_server: int
    pending: int
    lost: int
    duplicated: int
    violations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "on_server": self.on_server,
            "pending": self.pending,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "violations": self.violations,
        }


def reconcile(
    queued: Mapping[str, Sequence[str]],
    pending: Mapping[str, Collection[str]],
    server_events: Iterable[Mapping[str, Any]],
    serial_of: Mapping[str, str],
) -> EventsCheck:
    """Compare what the agents queued (`queued`, serial -> ids) and still hold (`pending`) with
    `server_events` (the server's events; only those of devices in `serial_of`, device uuid ->
    serial, are this run's)."""
    held: Counter[str] = Counter()
    owner: dict[str, str] = {}
    for event in server_events:
        serial = serial_of.get(str(event.get("deviceUuid", "")))
        if serial is None:
            continue
        event_id = str(event.get("id", ""))
        held[event_id] += 1
        owner.setdefault(event_id, serial)
    violations: list[dict[str, Any]] = []
    lost = still = 0
    mine: set[str] = set()
    for serial, ids in queued.items():
        waiting = pending.get(serial, ())
        for event_id in ids:
            mine.add(event_id)
            if held[event_id]:
                continue
            if event_id in waiting:
                still += 1
                continue
            lost += 1
            if sum(1 for v in violations if v["violation"] == "lost") < KEPT:
                violations.append({"violation": "lost", "serial": serial, "id": event_id})
    duplicated = 0
    for event_id, n in held.items():
        extra = n - 1 if event_id in mine else n
        if extra <= 0:
            continue
        duplicated += extra
        if sum(1 for v in violations if v["violation"] == "duplicated") < KEPT:
            why = "stored more than once" if event_id in mine else "no agent queued it"
            violations.append(
                {"violation": "duplicated", "serial": owner[event_id], "id": event_id, "why": why}
            )
    return EventsCheck(
        queued=sum(len(ids) for ids in queued.values()),
        on_server=sum(held.values()),
        pending=still,
        lost=lost,
        duplicated=duplicated,
        violations=violations,
    )
