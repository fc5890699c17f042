"""The simulated platform: an in-memory device the simulator (and tests) drive.

No filesystem, no subprocess, no androguard: thousands of these live in one process.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.platforms.base import AppRecord, BuildInfo, HardwareInfo, PowerState


class SimulatedPlatform:
    name = "simulated"

    def __init__(
        self,
        hardware: HardwareInfo,
        build: BuildInfo | None = None,
        *,
        apps: list[AppRecord] | None = None,
        ac: bool = True,
        battery: float | None = 100.0,
        network: str = "wifi",
    ) -> None:
        self._hardware = hardware
        self._build = build or BuildInfo()
        self.apps: dict[str, AppRecord] = {a.package_name: a for a in apps or []}
        self.ac, self.battery, self.network_type = ac, battery, network
        self.is_sleeping = False
        self.settings: dict[str, Any] = {}
        self.staged_ota: Path | None = None
        self.reboots = 0

    async def hardware(self) -> HardwareInfo:
        return self._hardware

    async def build(self) -> BuildInfo:
        return self._build

    def set_build(self, **changes: Any) -> None:
        self._build = replace(self._build, **changes)

    async def power(self) -> PowerState:
        return PowerState(ac=self.ac, battery=self.battery)

    async def network(self) -> str:
        return self.network_type

    async def sleeping(self) -> bool:
        return self.is_sleeping

    async def installed_apps(self) -> list[AppRecord]:
        return list(self.apps.values())

    async def install_app(self, apk: Path, *, grant_all: bool = False) -> None:
        package = apk.stem
        self.apps[package] = AppRecord(package_name=package)

    async def uninstall_app(self, package: str) -> None:
        self.apps.pop(package, None)

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        self.settings.update(settings)

    async def apply_ota(self, package: Path, *, ab_update: bool) -> None:
        self.staged_ota = package

    async def wake(self) -> None:
        self.is_sleeping = False

    async def reboot(self) -> None:
        self.reboots += 1
        self.is_sleeping = False
