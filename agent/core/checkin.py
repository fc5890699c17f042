"""The check-in body (§7) from the device's facts, and the inventory hash (pure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from agent.platforms.base import AppRecord, DeviceFacts

CLIENT_VERSION = 1  # states.clientVersion: bump when the agent's protocol behaviour changes


def inventory_hash(apps: Sequence[AppRecord]) -> str:
    """sha256 of the inventory's canonical JSON (sorted by package), so order does not matter."""
    canonical = json.dumps(
        sorted((a.to_json() for a in apps), key=lambda a: a["packageName"]),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def checkin_body(facts: DeviceFacts, *, rtc_enabled: bool, inventory: str | None) -> dict[str, Any]:
    activity = "sleeping" if facts.sleeping else "active"
    body: dict[str, Any] = {
        "states": {
            "clientVersion": CLIENT_VERSION,
            "rtcEnabled": rtc_enabled,
            "state": "sleeping" if facts.sleeping else "online",
        },
        "activity": activity,
        "power": {"ac": facts.power.ac, "battery": facts.power.battery},
        "network": facts.network,
        "build": facts.build.to_json(),
    }
    if inventory is not None:
        body["inventoryHash"] = inventory
    return body
