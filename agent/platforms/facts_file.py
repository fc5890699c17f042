"""`--facts FILE`: JSON `{"hardware_info": {...}, "build": {...}}` overriding what a platform
reads, with the check-in body's field names, any subset (rigs with unreadable DMI data,
clones of a field device).

The build given is the STARTING build: once an image has been applied, the platform reports
the applied build over it (linux: the active slot's build; simulated: the build it booted). On
Android the device's own properties are its build, before and after an update: the facts' build
fields only fill what `getprop` leaves empty (a phone cannot pretend to run another build and
still take that build's images).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent import protocol
from agent.errors import ConfigError
from agent.models import BuildInfo, HardwareInfo

_SECTIONS = {
    protocol.HARDWARE_SECTION: tuple(protocol.HARDWARE_FIELDS.values()),
    protocol.BUILD_SECTION: tuple(protocol.BUILD_FIELDS.values()),
}


def load_facts(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--facts {path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--facts {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"--facts {path}: must be a JSON object")
    for section, fields in _SECTIONS.items():
        given = values.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"--facts {path}: {section} must be an object")
        unknown = set(given) - set(fields)
        if unknown:
            raise ConfigError(
                f"--facts {path}: unknown {section} field(s): {', '.join(sorted(unknown))}"
            )
    return values


def override_hardware(hardware: HardwareInfo, facts: dict[str, Any]) -> HardwareInfo:
    given = facts.get(protocol.HARDWARE_SECTION) or {}
    return replace(hardware, **protocol.hardware_from_wire(given))


def override_build(
    build: BuildInfo, facts: dict[str, Any], *, fill_only: bool = False
) -> BuildInfo:
    """`build` with the facts' build fields over it; with `fill_only`, only over empty ones."""
    given = facts.get(protocol.BUILD_SECTION) or {}
    if fill_only:
        return replace(
            build, **protocol.build_from_wire(given, lambda a: getattr(build, a) in ("", None))
        )
    return replace(build, **protocol.build_from_wire(given))
