"""The Platform seam: what the agent asks of a device, as typed values.

Every platform (linux, android, simulated) implements `Platform`; the agent never touches the
device otherwise. Facts use the check-in body's field names when they go on the wire.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareInfo:
    serial_no: str
    manufacturer: str = ""
    brand: str = ""
    model: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildInfo:
    fingerprint: str = ""
    build_date: int | None = None
    display_id: str = ""
    sdk: str = ""
    device_id: str = ""
    product_id: str = ""
    sku_id: str = ""
    customer_id: str = ""
    ab_update: bool = False
    slot: str = ""
    region: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "buildDate": self.build_date,
            "displayId": self.display_id,
            "sdk": self.sdk,
            "deviceId": self.device_id,
            "productId": self.product_id,
            "skuId": self.sku_id,
            "customerId": self.customer_id,
            "abUpdate": self.ab_update,
            "slot": self.slot,
            "region": self.region,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerState:
    ac: bool
    battery: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AppRecord:
    """One installed app, with the AppInfo field names of the protocol."""

    package_name: str
    version_code: int | None = None
    label: str = ""
    version_name: str = ""
    min_sdk_version: str = ""
    target_sdk_version: str = ""
    max_sdk_version: str = ""
    cert_md5: str = ""
    app_size: int | None = None
    data_size: int | None = None
    first_installed: int | None = None
    last_updated: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "packageName": self.package_name,
            "label": self.label,
            "versionCode": self.version_code,
            "versionName": self.version_name,
            "minSdkVersion": self.min_sdk_version,
            "targetSdkVersion": self.target_sdk_version,
            "maxSdkVersion": self.max_sdk_version,
            "certMd5": self.cert_md5,
            "appSize": self.app_size,
            "dataSize": self.data_size,
            "firstInstalled": self.first_installed,
            "lastUpdated": self.last_updated,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFacts:
    hardware: HardwareInfo
    build: BuildInfo
    power: PowerState
    network: str
    sleeping: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "hardware_info": self.hardware.to_json(),
            "build": self.build.to_json(),
            "power": {"ac": self.power.ac, "battery": self.power.battery},
            "network": self.network,
            "sleeping": self.sleeping,
            **self.extra,
        }


class Platform(Protocol):
    name: str

    async def hardware(self) -> HardwareInfo: ...

    async def build(self) -> BuildInfo: ...

    async def power(self) -> PowerState: ...

    async def network(self) -> str: ...

    async def sleeping(self) -> bool: ...

    async def installed_apps(self) -> list[AppRecord]: ...

    async def install_app(self, apk: Path, *, grant_all: bool = False) -> None: ...

    async def uninstall_app(self, package: str) -> None: ...

    async def apply_settings(self, settings: dict[str, Any]) -> None: ...

    async def apply_ota(self, package: Path, *, ab_update: bool) -> None: ...

    async def reboot(self) -> None: ...

    async def wake(self) -> None:
        """Bring a sleeping device to life (a `wake` on the push channel)."""
        ...

    async def consent(self, what: str) -> bool:
        """Ask the user before a non-silent install; True when it may go ahead."""
        ...

    async def launch(self, package: str) -> None:
        """Start an app (`starts_on_update`)."""
        ...

    async def rollback(self) -> None:
        """The new build did not come up: make the previous slot the active one again."""
        ...


async def gather_facts(platform: Platform) -> DeviceFacts:
    return DeviceFacts(
        hardware=await platform.hardware(),
        build=await platform.build(),
        power=await platform.power(),
        network=await platform.network(),
        sleeping=await platform.sleeping(),
    )
