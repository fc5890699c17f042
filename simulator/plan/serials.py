"""Duplicate serials in a plan (pure): found before anything starts, reported, never merged.

Two planned devices with one serial (two kinds given one `serial_prefix`, or the clones of one
snapshot numbered alike) are two devices to the simulator: two agents, two ledgers of events,
each with its own rng. A MiDM server knows a device by its serial only, so it holds one record
for them and each one's registration revokes the other's token: the field bug this lets a
scenario reproduce. The plan says so up front: `duplicates()` names each shared serial and how
many devices share it, `duplicate_devices()` counts the devices involved (the report's
`devices.duplicate_serials`), and `warning()` is the one line the plan, the log and the report
show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

SHOWN = 3  # serials quoted in the warning


def duplicates(serials: Iterable[str]) -> dict[str, int]:
    """Each serial that more than one of the planned devices' `serials` is, and how many
    devices have it (in plan order)."""
    counts = Counter(serials)
    return {serial: n for serial, n in counts.items() if n > 1}


def duplicate_devices(shared: Mapping[str, int]) -> int:
    """The devices that share their serial with another (`duplicates()`'s counts added)."""
    return sum(shared.values())


def warning(shared: Mapping[str, int]) -> str | None:
    """The plan's one-line warning, or None when every serial is its own."""
    if not shared:
        return None
    quoted = ", ".join(f"{s} x{n}" for s, n in list(shared.items())[:SHOWN])
    more = f", and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
    return (
        f"duplicate serials: {duplicate_devices(shared)} devices share {len(shared)} serials "
        f"({quoted}{more}); the simulator runs each as its own agent, the server knows one "
        "device per serial"
    )
