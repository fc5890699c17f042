"""The simulated platform: an in-memory device the simulator (and tests) drive.

No filesystem, no subprocess, no androguard: thousands of these live in one process. Installs
take artifacts whose metadata the agent read once per content (agent.runtime.artifacts); the
platform never parses a package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.models import ApkArtifact, AppRecord, BuildInfo, HardwareInfo, OtaArtifact, PowerState


class SimulatedPlatform:
    name = "simulated"
    inventory_in_memory = True

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
        self._power = PowerState(ac=ac, battery=battery)  # what power() answered last
        self.is_sleeping = False
        self.settings: dict[str, Any] = {}
        self.staged_ota: OtaArtifact | None = None
        self.staged_build: tuple[str, int | None] | None = None
        self.reboots = 0
        self.consents = True
        self.launched: list[str] = []
        self.granted: dict[str, bool] = {}
        self.rollbacks = 0
        self.boot_fails = False  # the next boot into a new build fails (rollback tests)
        self.on_change: Callable[[], None] | None = None

    async def hardware(self) -> HardwareInfo:
        return self._hardware

    async def build(self) -> BuildInfo:
        return self._build

    def set_build(self, **changes: Any) -> None:
        self._build = replace(self._build, **changes)

    async def power(self) -> PowerState:
        """The power state; the one answered last while `ac` and `battery` are the very same
        values (a check-in asks each time: a PowerState is ~0.4 us to make)."""
        power = self._power
        if power.ac is not self.ac or power.battery is not self.battery:
            power = self._power = PowerState(ac=self.ac, battery=self.battery)
        return power

    async def network(self) -> str:
        return self.network_type

    async def sleeping(self) -> bool:
        return self.is_sleeping

    async def installed_apps(self) -> list[AppRecord]:
        return list(self.apps.values())

    async def install_app(self, apk: ApkArtifact, *, grant_all: bool = False) -> None:
        meta = apk.metadata
        self.apps[meta.package_name] = AppRecord(
            package_name=meta.package_name,
            version_code=meta.version_code,
            label=meta.label,
            version_name=meta.version_name,
            cert_md5=meta.cert_md5,
            app_size=meta.size,
        )
        self.granted[meta.package_name] = grant_all

    async def uninstall_app(self, package: str) -> None:
        self.apps.pop(package, None)

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        self.settings.update(settings)

    async def apply_ota(self, image: OtaArtifact, *, ab_update: bool) -> None:
        self.staged_ota = image
        self.staged_build = (image.metadata.post_build, image.metadata.post_timestamp)

    async def wake(self) -> None:
        self.is_sleeping = False

    async def consent(self, what: str) -> bool:
        return self.consents

    async def launch(self, package: str) -> None:
        self.launched.append(package)

    async def rollback(self) -> None:
        self.rollbacks += 1

    def set_power(self, *, ac: bool) -> None:
        """The simulator (or a test) plugs or unplugs AC; the agent hears of it at once."""
        self.ac = ac
        if self.on_change is not None:
            self.on_change()

    async def reboot(self) -> None:
        self.reboots += 1
        self.is_sleeping = False
        if self.staged_build is not None and not self.boot_fails:
            fingerprint, date = self.staged_build
            self.set_build(fingerprint=fingerprint, build_date=date)
        self.staged_build = None
