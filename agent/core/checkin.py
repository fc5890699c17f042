"""The inventory hash (pure): what a check-in says about the installed apps without sending them.

sha256 of the inventory's canonical JSON (its AppInfo fields from agent.protocol, sorted by
package, keys sorted, no spaces), so the order of the apps does not matter. The check-in body
itself is agent.protocol's (`checkin_body`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from agent import protocol
from agent.models import AppRecord


def inventory_hash(apps: Sequence[AppRecord]) -> str:
    canonical = json.dumps(
        [protocol.app_to_wire(a) for a in sorted(apps, key=lambda a: a.package_name)],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
