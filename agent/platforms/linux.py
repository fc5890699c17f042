"""The Linux rig platform.

- Hardware from DMI (`<sysfs>/class/dmi/id/`), serial falling back to `/etc/machine-id` when
  `product_serial` is unreadable (it is root-only); `--facts` overrides any field. Empty
  manufacturer/brand/model are warned about once (`platform.hardware_incomplete`).
- Build: os-release < `--facts` (the starting build) < the build of an image applied to the
  active slot (`slots/<slot>/build.json`): after an update the image's build is reported.
- Power from `<sysfs>/class/power_supply/*`: AC is online when a `Mains` supply says so, or
  when there are no supplies at all (a desktop); `--ac-online yes|no` overrides.
- Network: `wifi` when a wireless interface is up, else `ethernet` when a wired one is, else
  `none`.
- Installed apps: the APKs in `--apk-dir` (install copies an APK in as `<package>.apk`,
  uninstall removes it). Metadata is read by midm_common.apk in a worker thread. A folder
  that cannot be listed fails the scan (PlatformError), never an empty inventory. Times come
  from the files by agent.apk.times (firstInstalled <= lastUpdated, firstInstalled remembered).
- OTA: a directory-backed A/B slot pair under `<state dir>/slots/`: an update is copied into the
  inactive slot and marked pending; `reboot` switches slots when one is pending.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import structlog

from agent.apk.inventory import CACHE_FILE, InventoryScanner, folder_problem
from agent.errors import ApkError, PlatformError
from agent.models import ApkArtifact, AppRecord, BuildInfo, HardwareInfo, OtaArtifact, PowerState
from agent.platforms.base import file_of
from agent.platforms.facts_file import override_build, override_hardware
from agent.runtime.files import write_atomic

log = structlog.get_logger("agent.linux")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


class LinuxPlatform:
    name = "linux"
    inventory_in_memory = False

    def __init__(
        self,
        *,
        state_dir: Path,
        apk_dir: Path | None = None,
        facts: dict[str, Any] | None = None,
        ac_online: str = "auto",
        sysfs: Path = Path("/sys"),
        etc: Path = Path("/etc"),
    ) -> None:
        self.state_dir = state_dir
        self.apk_dir = apk_dir
        self.facts = facts or {}
        self.ac_online = ac_online
        self.sysfs = sysfs
        self.etc = etc
        self.slots = state_dir / "slots"
        self._scanner: InventoryScanner | None = None
        self._warned_hardware = False

    async def hardware(self) -> HardwareInfo:
        dmi = self.sysfs / "class" / "dmi" / "id"
        serial = _read(dmi / "product_serial") or _read(self.etc / "machine-id")
        hardware = HardwareInfo(
            serial_no=serial,
            manufacturer=_read(dmi / "sys_vendor"),
            brand=_read(dmi / "board_vendor") or _read(dmi / "sys_vendor"),
            model=_read(dmi / "product_name"),
        )
        hardware = override_hardware(hardware, self.facts)
        if not hardware.serial_no:
            raise PlatformError(
                "no serial number: DMI product_serial and /etc/machine-id are unreadable; "
                'give one with --facts FILE ({"hardware_info": {"serial_no": ...}})'
            )
        empty = [f for f in ("manufacturer", "brand", "model") if not getattr(hardware, f)]
        if empty and not self._warned_hardware:
            self._warned_hardware = True  # once per run, not at every check-in
            log.warning(
                "platform.hardware_incomplete",
                empty=empty,
                hint=f"DMI ({dmi}) does not give them; set them with --facts FILE "
                '({"hardware_info": {"manufacturer": ..., "brand": ..., "model": ...}})',
            )
        return hardware

    def _active_slot(self) -> str:
        return _read(self.slots / "active") or "a"

    async def build(self) -> BuildInfo:
        release = {}
        for line in _read(self.etc / "os-release").splitlines():
            key, _, value = line.partition("=")
            release[key] = value.strip('"')
        slot = self._active_slot()
        slot_build = {}
        raw = _read(self.slots / slot / "build.json")
        if raw:
            try:
                slot_build = json.loads(raw)
            except json.JSONDecodeError:
                slot_build = {}
        build = BuildInfo(
            fingerprint=release.get("ID", "linux") + "/" + release.get("VERSION_ID", ""),
            display_id=release.get("PRETTY_NAME", ""),
            ab_update=True,
            slot=f"_{slot}",
        )
        build = override_build(build, self.facts)  # the starting build
        # an image applied to the active slot is what runs now, whatever the facts said
        return override_build(build, {"build": slot_build}) if slot_build else build

    async def power(self) -> PowerState:
        supplies = sorted((self.sysfs / "class" / "power_supply").glob("*"))
        mains = [s for s in supplies if _read(s / "type") == "Mains"]
        batteries = [s for s in supplies if _read(s / "type") == "Battery"]
        if self.ac_online in ("yes", "no"):
            ac = self.ac_online == "yes"
        else:
            ac = not supplies or any(_read(s / "online") == "1" for s in mains)
        level: float | None = None
        for battery in batteries:
            capacity = _read(battery / "capacity")
            if capacity.isdigit():
                level = float(capacity)
                break
        return PowerState(ac=ac, battery=level)

    async def network(self) -> str:
        found = "none"
        for interface in sorted((self.sysfs / "class" / "net").glob("*")):
            if interface.name == "lo" or _read(interface / "operstate") != "up":
                continue
            if (interface / "wireless").exists():
                return "wifi"
            found = "ethernet"
        return found

    async def sleeping(self) -> bool:
        return False

    def _apks(self) -> list[Path]:
        if self.apk_dir is None or not self.apk_dir.is_dir():
            return []
        return sorted(self.apk_dir.glob("*.apk"))

    async def installed_apps(self) -> list[AppRecord]:
        if self.apk_dir is None:
            return []
        if self._scanner is None:
            self._scanner = InventoryScanner(self.apk_dir, self.state_dir / CACHE_FILE)
        return (await self._scanner.scan()).apps

    async def install_app(self, apk: ApkArtifact, *, grant_all: bool = False) -> None:
        if self.apk_dir is None:
            raise PlatformError("cannot install apps: no --apk-dir")
        await asyncio.to_thread(self._copy_in, file_of(apk), apk.metadata.package_name)

    def _copy_in(self, apk: Path, package: str) -> None:
        assert self.apk_dir is not None
        if problem := folder_problem(self.apk_dir):  # unmounted: never install beside it
            raise PlatformError(f"--apk-dir {self.apk_dir}: cannot install there ({problem})")
        write_atomic(self.apk_dir / f"{package}.apk", apk.read_bytes(), mode=0o644)

    async def uninstall_app(self, package: str) -> None:
        """Remove every APK of the folder that holds `package`."""
        await asyncio.to_thread(self._remove, package)

    def _remove(self, package: str) -> None:
        from midm_common.apk import read_apk_metadata

        for path in self._apks():
            try:
                found = read_apk_metadata(path).package_name
            except ApkError:
                continue
            if found == package:
                path.unlink(missing_ok=True)

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        path = self.state_dir / "settings.json"
        current = json.loads(_read(path) or "{}")
        current.update(settings)
        await asyncio.to_thread(write_atomic, path, json.dumps(current, indent=2).encode())

    async def apply_ota(self, image: OtaArtifact, *, ab_update: bool) -> None:
        package, meta = file_of(image), image.metadata
        target = "b" if self._active_slot() == "a" else "a"
        folder = self.slots / target
        folder.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, package, folder / "update.zip")
        build = {
            "fingerprint": meta.post_build,
            "buildDate": meta.post_timestamp,
            "slot": f"_{target}",
        }
        write_atomic(folder / "build.json", json.dumps(build).encode(), mode=0o644)
        write_atomic(self.slots / "pending", target.encode(), mode=0o644)

    async def wake(self) -> None:
        """Rigs do not sleep; nothing to do."""

    async def consent(self, what: str) -> bool:
        """A rig has nobody to ask: consent is given."""
        return True

    async def launch(self, package: str) -> None:
        log.info("linux.launch", package=package)

    async def rollback(self) -> None:
        previous = _read(self.slots / "previous")
        if previous:
            write_atomic(self.slots / "active", previous.encode(), mode=0o644)

    async def reboot(self) -> None:
        pending = _read(self.slots / "pending")
        if pending:
            write_atomic(self.slots / "previous", self._active_slot().encode(), mode=0o644)
            write_atomic(self.slots / "active", pending.encode(), mode=0o644)
            (self.slots / "pending").unlink(missing_ok=True)
