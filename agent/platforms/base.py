"""The Platform seam: what the agent asks of a device, as typed values (agent.models).

Every platform (linux, android, simulated) implements `Platform`; the agent never touches the
device otherwise. Installs take an artifact whose metadata the agent has already read (once per
content): a platform never parses an APK or OTA package it is given. The JSON form of the facts
is agent.protocol's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from agent.errors import PlatformError
from agent.models import (
    ApkArtifact,
    AppRecord,
    BuildInfo,
    DeviceFacts,
    HardwareInfo,
    OtaArtifact,
    PowerState,
)

__all__ = [
    "AppRecord",
    "BuildInfo",
    "DeviceFacts",
    "HardwareInfo",
    "Platform",
    "PowerState",
    "file_of",
    "gather_facts",
]


class Platform(Protocol):
    name: str
    # True when installed_apps() only reads memory (the simulated device): the agent awaits it
    # in line instead of running it as a scan beside the check-in
    inventory_in_memory: bool

    async def hardware(self) -> HardwareInfo: ...

    async def build(self) -> BuildInfo: ...

    async def power(self) -> PowerState: ...

    async def network(self) -> str: ...

    async def sleeping(self) -> bool: ...

    async def installed_apps(self) -> list[AppRecord]: ...

    async def install_app(self, apk: ApkArtifact, *, grant_all: bool = False) -> None:
        """Install `apk` (a platform that needs the file raises PlatformError without one)."""
        ...

    async def uninstall_app(self, package: str) -> None: ...

    async def apply_settings(self, settings: dict[str, Any]) -> None: ...

    async def apply_ota(self, image: OtaArtifact, *, ab_update: bool) -> None:
        """Stage `image` for the next boot (the caller reboots afterwards)."""
        ...

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


def file_of(artifact: ApkArtifact | OtaArtifact) -> Path:
    """The artifact's file, for platforms that install from one."""
    if artifact.path is None:
        raise PlatformError(
            f"content {artifact.sha256[:12]} was only hashed, not kept: this platform installs "
            "from a file (give the agent a file-backed artifact store)"
        )
    return artifact.path
