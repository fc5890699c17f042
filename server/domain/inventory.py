"""App inventories (pure): when the server asks a device for one, which hash it is stored with,
and what an app's status is when no install event reported it.

- `inventoryWanted` is true until an inventory was stored, and whenever the check-in's
  `inventoryHash` differs from the hash stored with the last inventory; a check-in without a
  hash asks for nothing once an inventory is stored.
- The hash stored with an inventory is the PUT's `inventoryHash` if given, else the one the
  device's previous check-in reported, else "" (so the next hashed check-in asks again).
- AppStatus of a package [ours]: the last install event's outcome if there is one; else the
  last inventory, installed with its versionCode, if it lists the package; else not installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def inventory_wanted(*, stored_hash: str | None, reported_hash: str | None) -> bool:
    """`stored_hash` is None until an inventory was stored."""
    if stored_hash is None:
        return True
    return reported_hash is not None and reported_hash != stored_hash


def stored_hash(*, given: str | None, last_reported: str | None) -> str:
    """The hash to keep with an inventory the device just sent."""
    return given or last_reported or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AppStatus:
    version_code: int | None
    installed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallEvent:
    """The outcome an `app` event last reported for one package."""

    version_code: int | None
    installed: bool


def app_status(
    package: str, *, event: InstallEvent | None, inventory: Iterable[Mapping[str, Any]]
) -> AppStatus:
    if event is not None:
        return AppStatus(version_code=event.version_code, installed=event.installed)
    for app in inventory:
        if app.get("packageName") == package:
            return AppStatus(version_code=app.get("versionCode"), installed=True)
    return AppStatus(version_code=None, installed=False)
