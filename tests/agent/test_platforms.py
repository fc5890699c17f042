"""Platforms: linux from a fake sysfs tree, android through a fake adb replaying real outputs,
and one conformance check that every platform answers the same typed facts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent import protocol
from agent.errors import PlatformError
from agent.models import BuildInfo, DeviceFacts, HardwareInfo
from agent.platforms.android_adb import AndroidPlatform, parse_packages
from agent.platforms.base import Platform, gather_facts
from agent.platforms.linux import LinuxPlatform
from agent.platforms.simulated import SimulatedPlatform
from agent.runtime.artifacts import apk_artifact, ota_artifact
from tests.helpers import APKS, FIXTURES, ota_zip


def fake_sysfs(root: Path, *, mains: str | None = "1", wifi: bool = True) -> Path:
    dmi = root / "sys" / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("Intel Corporation\n")
    (dmi / "product_name").write_text("NUC8i5BEH\n")
    (dmi / "product_serial").write_text("G6BE1234\n")
    supplies = root / "sys" / "class" / "power_supply"
    supplies.mkdir(parents=True)
    if mains is not None:
        (supplies / "AC").mkdir()
        (supplies / "AC" / "type").write_text("Mains\n")
        (supplies / "AC" / "online").write_text(mains + "\n")
        (supplies / "BAT0").mkdir()
        (supplies / "BAT0" / "type").write_text("Battery\n")
        (supplies / "BAT0" / "capacity").write_text("55\n")
    net = root / "sys" / "class" / "net" / ("wlan0" if wifi else "eth0")
    net.mkdir(parents=True)
    (net / "operstate").write_text("up\n")
    if wifi:
        (net / "wireless").mkdir()
    etc = root / "etc"
    etc.mkdir()
    (etc / "os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n')
    (etc / "machine-id").write_text("abcdef\n")
    return root


def linux(root: Path, **kwargs: object) -> LinuxPlatform:
    return LinuxPlatform(state_dir=root / "state", sysfs=root / "sys", etc=root / "etc", **kwargs)  # type: ignore[arg-type]


async def test_linux_facts_from_sysfs(tmp_path: Path) -> None:
    """DMI, Mains/Battery and the wireless interface become typed facts."""
    platform = linux(fake_sysfs(tmp_path))
    facts = await gather_facts(platform)
    assert facts.hardware == HardwareInfo(
        serial_no="G6BE1234",
        manufacturer="Intel Corporation",
        brand="Intel Corporation",
        model="NUC8i5BEH",
    )
    assert (facts.power.ac, facts.power.battery, facts.network) == (True, 55.0, "wifi")
    assert facts.build.fingerprint == "debian/12" and facts.build.ab_update


async def test_linux_power_rules(tmp_path: Path) -> None:
    """Mains offline is battery; no supplies at all is mains; --ac-online overrides."""
    assert not (await linux(fake_sysfs(tmp_path / "a", mains="0")).power()).ac
    assert (await linux(fake_sysfs(tmp_path / "b", mains=None)).power()).ac
    assert not (await linux(fake_sysfs(tmp_path / "c"), ac_online="no").power()).ac


async def test_linux_serial_fallback_and_facts_override(tmp_path: Path) -> None:
    """No readable product_serial: machine-id; --facts overrides hardware and build."""
    root = fake_sysfs(tmp_path)
    (root / "sys" / "class" / "dmi" / "id" / "product_serial").unlink()
    assert (await linux(root).hardware()).serial_no == "abcdef"
    facts = {
        "hardware_info": {"serial_no": "CLONE-1"},
        "build": {"fingerprint": "f/1", "buildDate": 5},
    }
    platform = linux(root, facts=facts)
    assert (await platform.hardware()).serial_no == "CLONE-1"
    assert (await platform.build()).fingerprint == "f/1"
    (root / "etc" / "machine-id").unlink()
    with pytest.raises(PlatformError, match="no serial number"):
        await linux(root).hardware()


async def test_linux_apps_and_slots(tmp_path: Path) -> None:
    """The APK folder is the installed set; an OTA goes to the other slot and boots on reboot."""
    root = fake_sysfs(tmp_path)
    apk_dir = tmp_path / "apks"
    apk_dir.mkdir()
    shutil.copy(APKS / "basic-v1.apk", apk_dir)
    shutil.copy(APKS / "corrupt-truncated.apk", apk_dir)
    platform = linux(root, apk_dir=apk_dir)
    apps = await platform.installed_apps()
    assert [(a.package_name, a.version_code) for a in apps] == [("com.example.basic", 1)]
    await platform.install_app(apk_artifact(APKS / "maxsdk.apk"))
    await platform.uninstall_app("com.example.basic")
    assert [a.package_name for a in await platform.installed_apps()] == ["com.example.maxsdk"]
    package = tmp_path / "ota.zip"
    package.write_bytes(
        ota_zip({"ota-type": "AB", "post-build": "debian/13", "post-timestamp": "9"})
    )
    await platform.apply_ota(ota_artifact(package), ab_update=True)
    assert (await platform.build()).slot == "_a"
    await platform.reboot()
    build = await platform.build()
    assert (build.slot, build.fingerprint, build.build_date) == ("_b", "debian/13", 9)


@pytest.fixture
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "adb.log"
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    return log


def android() -> AndroidPlatform:
    return AndroidPlatform(adb=str(FIXTURES / "adb" / "fake_adb.py"), device="R58N123ABC")


async def test_android_facts_through_adb(fake_adb: Path) -> None:
    """getprop, dumpsys battery/power/connectivity and pm list become typed facts."""
    platform = android()
    facts = await gather_facts(platform)
    assert facts.hardware == HardwareInfo(
        serial_no="R58N123ABC", manufacturer="samsung", brand="samsung", model="SM-T510"
    )
    assert (
        facts.build.build_date == 1643000000 and facts.build.ab_update and facts.build.slot == "_b"
    )
    assert (facts.power.ac, facts.power.battery, facts.sleeping, facts.network) == (
        True,
        76.0,
        True,
        "wifi",
    )
    apps = await platform.installed_apps()
    assert [(a.package_name, a.version_code) for a in apps] == [
        ("com.example.basic", 2),
        ("com.android.settings", 30),
    ]
    assert "-s R58N123ABC shell getprop" not in fake_adb.read_text()  # -s is stripped by the fake
    assert "shell getprop" in fake_adb.read_text()


async def test_linux_never_installs_into_a_missing_apk_dir(tmp_path: Path) -> None:
    """An unmounted or removed --apk-dir is not re-created by an install (the next scan would
    report that one app as the whole inventory): the install fails naming the folder."""
    apk_dir = tmp_path / "apks"
    platform = linux(fake_sysfs(tmp_path), apk_dir=apk_dir)
    with pytest.raises(
        PlatformError, match=r"--apk-dir .*apks: cannot install there \(not found\)"
    ):
        await platform.install_app(apk_artifact(APKS / "maxsdk.apk"))
    assert not apk_dir.exists()


async def test_android_facts_only_fill_the_build(fake_adb: Path) -> None:
    """On Android the device's own build wins over --facts (an applied image is reported, not
    the facts' fingerprint); facts fill only build fields the device leaves empty."""
    facts = {"build": {"fingerprint": "field/clone:1", "skuId": "EU", "buildDate": 1}}
    platform = AndroidPlatform(
        adb=str(FIXTURES / "adb" / "fake_adb.py"), device="R58N123ABC", facts=facts
    )
    build = await platform.build()
    assert build.fingerprint != "field/clone:1" and build.fingerprint
    assert build.build_date == 1643000000
    assert build.sku_id == "EU"


async def test_android_install_and_errors(fake_adb: Path) -> None:
    """Install pushes then pm install -r -g; an unknown command is a PlatformError naming it."""
    platform = android()
    await platform.install_app(apk_artifact(APKS / "basic-v1.apk"), grant_all=True)
    calls = fake_adb.read_text().splitlines()
    assert (
        calls[-2].startswith("push ")
        and calls[-1] == "shell pm install -r -g /data/local/tmp/basic-v1.apk"
    )
    with pytest.raises(PlatformError, match="unknown command"):
        await platform._shell("frobnicate")
    missing = AndroidPlatform(adb=str(FIXTURES / "adb" / "no-such-adb"))
    with pytest.raises(PlatformError, match="cannot run"):
        await missing.hardware()


def test_package_lines_split_on_last_equals() -> None:
    """Android 11+ paths contain '=='; the package is after the last '='."""
    assert parse_packages("package:/data/app/~~a==/x-b==/base.apk=com.x versionCode:7 uid:1") == [
        ("/data/app/~~a==/x-b==/base.apk", "com.x", 7)
    ]


async def platforms(tmp_path: Path) -> list[Platform]:
    simulated = SimulatedPlatform(HardwareInfo(serial_no="SIM-1"), BuildInfo(fingerprint="f"))
    return [simulated, linux(fake_sysfs(tmp_path / "linux")), android()]


async def test_conformance(tmp_path: Path, fake_adb: Path) -> None:
    """Every platform answers the same typed facts that serialise to the check-in's shape."""
    for platform in await platforms(tmp_path):
        facts = await gather_facts(platform)
        assert isinstance(facts, DeviceFacts) and facts.hardware.serial_no
        wire = json.loads(json.dumps(protocol.facts_to_wire(facts)))
        assert set(wire["build"]) >= {"fingerprint", "buildDate", "abUpdate", "deviceId"}
        assert isinstance(wire["power"]["ac"], bool)
        assert isinstance(await platform.installed_apps(), list)
