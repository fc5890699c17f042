"""The Android platform, through `adb` (a rig's USB/TCP device) or a local shell (on the device).

Facts come from `getprop`, `dumpsys battery`, `dumpsys power`, `dumpsys connectivity`; the app
list from `pm list packages -f --show-versioncode -U` (paths split on the last `=`, as Android
11+ paths contain `==`); installs push the APK then `pm install -r [-g]`. Every command has a
timeout; a failure is a PlatformError naming the command. `ota_certificates()` (for
`--ota-certs device`) pulls /system/etc/security/otacerts.zip (read in place on the device) and
reads every `*.x509.pem` in it, within OTACERTS_MAX_BYTES and OTACERTS_MAX_ENTRIES.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.apk.inventory import CACHE_FILE, AppFiles, InventoryScanner
from agent.apk.times import ordered_times
from agent.errors import PlatformError
from agent.models import ApkArtifact, AppRecord, BuildInfo, HardwareInfo, OtaArtifact, PowerState
from agent.platforms.base import file_of
from agent.platforms.facts_file import override_build, override_hardware

OTACERTS = "/system/etc/security/otacerts.zip"
OTACERTS_MAX_BYTES = 1 << 20  # the zip; a real one holds one or two certificates (a few KiB)
OTACERTS_MAX_ENTRIES = 64
OTACERT_MAX_BYTES = 64 * 1024  # one certificate, inflated

_PROP = re.compile(r"^\[(?P<key>[^\]]+)\]: \[(?P<value>.*)\]$")
_PACKAGE = re.compile(r"^package:(?P<rest>.+?)(?: versionCode:(?P<code>\d+))?(?: uid:\d+)?$")


def parse_getprop(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        match = _PROP.match(line.strip())
        if match:
            props[match["key"]] = match["value"]
    return props


def parse_packages(text: str) -> list[tuple[str, str, int | None]]:
    """(path, package, versionCode) from `pm list packages -f --show-versioncode`."""
    found = []
    for line in text.splitlines():
        match = _PACKAGE.match(line.strip())
        if not match:
            continue
        path, sep, package = match["rest"].rpartition("=")
        if not sep:
            continue
        found.append((path, package, int(match["code"]) if match["code"] else None))
    return found


def payload_location(package: Path) -> tuple[int, int, str]:
    """(offset, size) of payload.bin inside an A/B OTA zip, and payload_properties.txt."""
    import zipfile

    from agent.errors import OtaPackageError

    try:
        with zipfile.ZipFile(package) as archive:
            info = archive.getinfo("payload.bin")
            headers = archive.read("payload_properties.txt").decode().strip()
        with package.open("rb") as handle:
            handle.seek(info.header_offset + 26)
            name_len = int.from_bytes(handle.read(2), "little")
            extra_len = int.from_bytes(handle.read(2), "little")
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise OtaPackageError(
            f"{package.name}: no A/B payload ({exc})", reason="no_payload"
        ) from exc
    if info.compress_type != zipfile.ZIP_STORED:
        raise OtaPackageError(f"{package.name}: payload.bin is compressed", reason="bad_payload")
    offset = info.header_offset + 30 + name_len + extra_len
    return offset, info.file_size, headers


_TIME = re.compile(r"^\s*(firstInstallTime|lastUpdateTime)=(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def parse_package_times(text: str, zone: str = "UTC") -> dict[str, tuple[int | None, int | None]]:
    """firstInstallTime/lastUpdateTime per package from `dumpsys package packages` (device
    local time without zone; read in `zone`) as epoch ms."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    found: dict[str, dict[str, int]] = {}
    current = ""
    for line in text.splitlines():
        header = re.match(r"^\s*Package \[([^\]]+)\]", line)
        if header:
            current = header.group(1)
            continue
        match = _TIME.match(line)
        if match and current:
            moment = datetime.strptime(match.group(2), "%Y-%m-%d %H:%M:%S").replace(
                tzinfo=ZoneInfo(zone)
            )
            found.setdefault(current, {})[match.group(1)] = int(moment.timestamp() * 1000)
    return {p: (t.get("firstInstallTime"), t.get("lastUpdateTime")) for p, t in found.items()}


def parse_diskstats(text: str) -> dict[str, int]:
    """Data size per package from `dumpsys diskstats` ("Package Names" and "App Data Sizes")."""
    names = re.search(r"Package Names: \[(.*?)\]", text)
    sizes = re.search(r"App Data Sizes: \[(.*?)\]", text)
    if not names or not sizes:
        return {}
    packages = [n.strip().strip('"') for n in names.group(1).split(",")]
    values = [v.strip() for v in sizes.group(1).split(",")]
    return {p: int(v) for p, v in zip(packages, values, strict=False) if v.isdigit()}


def parse_otacerts(data: bytes) -> frozenset[bytes]:
    """The public keys (SubjectPublicKeyInfo DER) of the `*.x509.pem` entries of otacerts.zip;
    PlatformError naming the entry when one is not a PEM certificate."""
    import io
    import zipfile

    from midm_common.ota_signature import trusted_keys_of_pem

    if len(data) > OTACERTS_MAX_BYTES:
        raise PlatformError(f"{OTACERTS}: over {OTACERTS_MAX_BYTES} bytes")
    keys: set[bytes] = set()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
            if len(entries) > OTACERTS_MAX_ENTRIES:
                raise PlatformError(f"{OTACERTS}: more than {OTACERTS_MAX_ENTRIES} entries")
            for entry in entries:
                if not entry.filename.endswith(".x509.pem"):
                    continue
                if entry.file_size > OTACERT_MAX_BYTES:
                    raise PlatformError(f"{OTACERTS}: {entry.filename} is over {OTACERT_MAX_BYTES}")
                with archive.open(entry) as member:
                    pem = member.read(OTACERT_MAX_BYTES + 1)
                try:
                    keys |= trusted_keys_of_pem(pem)
                except ValueError as exc:
                    raise PlatformError(
                        f"{OTACERTS}: {entry.filename} is not a PEM certificate ({exc})"
                    ) from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise PlatformError(f"{OTACERTS}: not a readable zip ({exc})") from exc
    return frozenset(keys)


def _prepared(local: Path) -> bool:
    """Make the pull folder; True when this APK version was pulled before."""
    local.parent.mkdir(parents=True, exist_ok=True)
    return local.exists()


def _read_limited(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(OTACERTS_MAX_BYTES + 1)
    except OSError as exc:
        raise PlatformError(f"{OTACERTS}: cannot read ({exc.strerror})") from exc


def parse_battery(text: str) -> PowerState:
    ac = re.search(r"AC powered:\s*(true|false)", text)
    level = re.search(r"^\s*level:\s*(\d+)", text, re.M)
    return PowerState(
        ac=bool(ac and ac.group(1) == "true"), battery=float(level.group(1)) if level else None
    )


class AndroidPlatform:
    name = "android"
    inventory_in_memory = False

    def __init__(
        self,
        *,
        adb: str | None = "adb",
        device: str | None = None,
        facts: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
        state_dir: Path | None = None,
    ) -> None:
        self.adb = adb  # None: run commands in a local shell (the agent runs on the device)
        self.device = device
        self.facts = facts or {}
        self.timeout_s = timeout_s
        self._props: dict[str, str] | None = None
        self.state_dir = state_dir
        self._scanner: InventoryScanner | None = None

    async def _run(self, *args: str) -> str:
        if self.adb is None:
            command = ["sh", "-c", " ".join(shlex.quote(a) for a in args)]
        else:
            command = [self.adb, *(["-s", self.device] if self.device else []), *args]
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise PlatformError(f"cannot run {command[0]}: {exc.strerror}") from exc
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await process.communicate()
        except TimeoutError as exc:
            process.kill()
            await process.wait()
            raise PlatformError(f"{' '.join(args)}: no answer within {self.timeout_s:g} s") from exc
        if process.returncode != 0:
            detail = err.decode(errors="replace").strip()[:200]
            raise PlatformError(f"{' '.join(args)} failed ({process.returncode}): {detail}")
        return out.decode(errors="replace")

    async def _shell(self, *args: str) -> str:
        return await self._run(*args) if self.adb is None else await self._run("shell", *args)

    async def props(self) -> dict[str, str]:
        if self._props is None:
            self._props = parse_getprop(await self._shell("getprop"))
        return self._props

    async def hardware(self) -> HardwareInfo:
        props = await self.props()
        return override_hardware(
            HardwareInfo(
                serial_no=props.get("ro.serialno", ""),
                manufacturer=props.get("ro.product.manufacturer", ""),
                brand=props.get("ro.product.brand", ""),
                model=props.get("ro.product.model", ""),
            ),
            self.facts,
        )

    async def build(self) -> BuildInfo:
        self._props = None  # the build changes across an OTA: read it fresh
        props = await self.props()
        date = props.get("ro.build.date.utc", "")
        return override_build(
            BuildInfo(
                fingerprint=props.get("ro.build.fingerprint", ""),
                build_date=int(date) if date.isdigit() else None,
                display_id=props.get("ro.build.display.id", ""),
                sdk=props.get("ro.build.version.sdk", ""),
                device_id=props.get("ro.product.device", ""),
                ab_update=props.get("ro.build.ab_update", "") == "true",
                slot=props.get("ro.boot.slot_suffix", ""),
            ),
            self.facts,
            fill_only=True,  # the device's props are its build, also after an update
        )

    async def power(self) -> PowerState:
        return parse_battery(await self._shell("dumpsys", "battery"))

    async def network(self) -> str:
        text = await self._shell("dumpsys", "connectivity")
        for marker, name in (("WIFI", "wifi"), ("ETHERNET", "ethernet"), ("CELLULAR", "mobile")):
            if (
                re.search(rf"Active default network.*|NetworkAgentInfo.*{marker}", text)
                and marker in text
            ):
                return name
        return "none"

    async def sleeping(self) -> bool:
        text = await self._shell("dumpsys", "power")
        match = re.search(r"mWakefulness=(\w+)", text)
        return bool(match and match.group(1) in ("Asleep", "Dozing"))

    async def installed_apps(self) -> list[AppRecord]:
        """pm's list; with a state dir, full AppInfo from the APKs (pulled once per version
        over adb, read in place on the device), install times from `dumpsys package`, data
        sizes from `dumpsys diskstats` (a cache that may be stale)."""
        listed = parse_packages(
            await self._shell("pm", "list", "packages", "-f", "--show-versioncode", "-U")
        )
        if self.state_dir is None:
            return [AppRecord(package_name=p, version_code=c) for _, p, c in listed]
        if self._scanner is None:
            self._scanner = InventoryScanner(None, self.state_dir / CACHE_FILE)
        files = [
            AppFiles(await self._local_copy(path, package, code)) for path, package, code in listed
        ]
        scanned = {r.package_name: r for r in (await self._scanner.scan_files(files)).apps}
        times = parse_package_times(await self._shell("dumpsys", "package", "packages"))
        sizes = parse_diskstats(await self._shell("dumpsys", "diskstats"))
        records = []
        for _, package, code in listed:
            base = scanned.get(package) or AppRecord(package_name=package, version_code=code)
            first, last = ordered_times(*times.get(package, (None, None)))
            records.append(
                replace(
                    base,
                    version_code=code if code is not None else base.version_code,
                    first_installed=first,
                    last_updated=last,
                    data_size=sizes.get(package, base.data_size),
                )
            )
        return records

    async def _local_copy(self, path: str, package: str, code: int | None) -> Path:
        if self.adb is None:
            return Path(path)
        assert self.state_dir is not None
        folder = self.state_dir / "pulled"
        local: Path = folder / f"{package}-{code}.apk"
        if not await asyncio.to_thread(_prepared, local):
            partial = local.with_suffix(".part")
            await self._run("pull", path, str(partial))
            partial.replace(local)
        return local

    async def ota_certificates(self) -> frozenset[bytes]:
        """The keys the device's recovery trusts, from its otacerts.zip (pulled over adb into
        a temporary folder, or read in place on the device)."""
        if self.adb is None:
            data = await asyncio.to_thread(_read_limited, Path(OTACERTS))
        else:
            with tempfile.TemporaryDirectory(prefix="midm-otacerts-") as folder:
                local = Path(folder) / "otacerts.zip"
                await self._run("pull", OTACERTS, str(local))
                data = await asyncio.to_thread(_read_limited, local)
        return await asyncio.to_thread(parse_otacerts, data)

    async def install_app(self, apk: ApkArtifact, *, grant_all: bool = False) -> None:
        path = file_of(apk)
        target = f"/data/local/tmp/{path.name}"
        if self.adb is not None:
            await self._run("push", str(path), target)
        else:
            target = str(path)
        await self._shell("pm", "install", "-r", *(["-g"] if grant_all else []), target)

    async def uninstall_app(self, package: str) -> None:
        await self._shell("pm", "uninstall", package)

    async def apply_settings(self, settings: dict[str, Any]) -> None:
        for namespace in ("global", "secure", "system"):
            for key, value in (settings.get(namespace) or {}).items():
                await self._shell("settings", "put", namespace, str(key), str(value))

    async def apply_ota(self, image: OtaArtifact, *, ab_update: bool) -> None:
        """A/B: update_engine_client on the payload inside the zip (--follow for the outcome);
        non-A/B: stage the package for recovery. The caller reboots afterwards."""
        package = file_of(image)
        target = f"/data/ota_package/{package.name}"
        if self.adb is not None:
            await self._run("push", str(package), target)
        else:
            target = str(package)
        if not ab_update:
            await self._shell(
                "sh", "-c", f"echo '--update_package={target}' > /cache/recovery/command"
            )
            return
        offset, size, headers = await asyncio.to_thread(payload_location, package)
        output = await self._shell(
            "update_engine_client",
            "--update",
            f"--payload=file://{target}",
            f"--offset={offset}",
            f"--size={size}",
            f"--headers={headers}",
            "--follow",
        )
        if "UPDATED_NEED_REBOOT" not in output:
            raise PlatformError(f"update_engine_client did not finish: {output.strip()[-200:]}")

    async def wake(self) -> None:
        await self._shell("input", "keyevent", "KEYCODE_WAKEUP")

    async def consent(self, what: str) -> bool:
        """Non-silent installs on a test rig: consent is assumed (pm install is used)."""
        return True

    async def rollback(self) -> None:
        """update_engine falls back to the previous slot by itself when a boot fails."""

    async def launch(self, package: str) -> None:
        await self._shell("monkey", "-p", package, "-c", "android.intent.category.LAUNCHER", "1")

    async def reboot(self) -> None:
        await self._shell("reboot")
