"""The app inventory from APK metadata: every field, the persistent cache, bad files, split
APKs, Android through adb, and change detection (one report per install/upgrade/removal)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.apk import inventory
from agent.apk.inventory import CACHE_FILE, InventoryScanner
from agent.errors import PlatformError
from agent.platforms.android_adb import AndroidPlatform
from agent.runtime.agent import Agent
from tests.agent.agent_harness import RecordingTransport, make_agent
from tests.helpers import APKS, FIXTURES, Client, Server, expected_apks

SIGNED = ["basic-v1.apk", "maxsdk.apk", "nolabel.apk", "nosdk.apk", "v1only.apk"]


def tree(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(APKS / name, root / name)
    return root


async def test_every_field_matches_aapt_and_keytool(tmp_path: Path) -> None:
    """packageName, label, versions, SDKs, certMd5 and appSize equal expected.json."""
    scanner = InventoryScanner(tree(tmp_path / "apks", SIGNED), tmp_path / CACHE_FILE)
    result = await scanner.scan()
    by_package = {a.package_name: a for a in result.apps}
    for name in SIGNED:
        want = expected_apks()[name]
        app = by_package[want["packageName"]]
        assert (app.version_code, app.version_name, app.cert_md5, app.app_size) == (
            want["versionCode"],
            want["versionName"],
            want["certMd5"],
            want["appSize"],
        )
        assert (app.min_sdk_version, app.target_sdk_version, app.max_sdk_version) == (
            want["minSdkVersion"],
            want["targetSdkVersion"],
            want["maxSdkVersion"],
        )
        assert app.label == (want["label"] or want["packageName"])
        assert app.first_installed and app.last_updated and app.data_size == 0


async def test_cache_parses_only_changes_and_survives_restart(tmp_path: Path) -> None:
    """A rescan parses nothing; a changed APK is parsed again; a new scanner reuses the cache."""
    root = tree(tmp_path / "apks", ["basic-v1.apk", "maxsdk.apk"])
    cache = tmp_path / CACHE_FILE
    first = await InventoryScanner(root, cache).scan()
    assert first.parsed == 2
    scanner = InventoryScanner(root, cache)
    assert (await scanner.scan()).parsed == 0
    shutil.copy(APKS / "basic-v2.apk", root / "basic-v1.apk")  # upgraded in place
    upgraded = await scanner.scan()
    assert upgraded.parsed == 1
    assert {a.package_name: a.version_code for a in upgraded.apps}["com.example.basic"] == 2
    (root / "maxsdk.apk").unlink()
    assert [a.package_name for a in (await scanner.scan()).apps] == ["com.example.basic"]
    assert len(json.loads(cache.read_text())["entries"]) == 1


async def test_corrupt_cache_is_discarded_with_a_warning(tmp_path: Path) -> None:
    """A damaged cache file is dropped (everything is parsed again) and a warning says so."""
    root = tree(tmp_path / "apks", ["basic-v1.apk"])
    (tmp_path / CACHE_FILE).write_text("{not json")
    with capture_logs() as logs:
        result = await InventoryScanner(root, tmp_path / CACHE_FILE).scan()
    assert result.parsed == 1 and len(result.apps) == 1
    assert any(e["event"] == "inventory.cache_discarded" for e in logs)


async def test_bad_files_never_stop_a_scan(tmp_path: Path) -> None:
    """Truncated, non-zip and empty files are skipped with a warning naming them, once;
    an unsigned APK is reported with what can be read."""
    root = tree(
        tmp_path / "apks",
        ["basic-v1.apk", "corrupt-truncated.apk", "not-a-zip.apk", "unsigned.apk"],
    )
    (root / "empty.apk").write_bytes(b"")
    scanner = InventoryScanner(root, tmp_path / CACHE_FILE)
    with capture_logs() as logs:
        result = await scanner.scan()
    assert sorted(a.package_name for a in result.apps) == [
        "com.example.basic",
        "com.example.unsigned",
    ]
    assert next(a for a in result.apps if a.package_name == "com.example.unsigned").cert_md5 == ""
    warned = {
        Path(e["path"]).name: e["reason"] for e in logs if e["event"] == "inventory.parse_failed"
    }
    assert warned == {
        "corrupt-truncated.apk": "bad_zip",
        "not-a-zip.apk": "bad_zip",
        "empty.apk": "empty",
    }
    with capture_logs() as again:
        assert (await scanner.scan()).skipped == 3
    assert not [e for e in again if e["event"] == "inventory.parse_failed"]


async def test_split_apks_are_one_app(tmp_path: Path) -> None:
    """A folder with base.apk and split_*.apk is one app whose size is the sum."""
    app = tmp_path / "apks" / "com.example.basic-1"
    app.mkdir(parents=True)
    shutil.copy(APKS / "basic-v1.apk", app / "base.apk")
    shutil.copy(APKS / "nosdk.apk", app / "split_config.xxhdpi.apk")
    result = await InventoryScanner(tmp_path / "apks", tmp_path / CACHE_FILE).scan()
    assert [(a.package_name, a.app_size) for a in result.apps] == [
        (
            "com.example.basic",
            (APKS / "basic-v1.apk").stat().st_size + (APKS / "nosdk.apk").stat().st_size,
        )
    ]


async def test_many_changes_use_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the threshold, parsing runs in a process pool and gives the same answers."""
    monkeypatch.setattr(inventory, "PROCESS_POOL_THRESHOLD", 2)
    root = tmp_path / "apks"
    root.mkdir()
    for i in range(6):
        shutil.copy(APKS / ("basic-v2.apk" if i == 5 else "maxsdk.apk"), root / f"copy{i}.apk")
    result = await InventoryScanner(root, tmp_path / CACHE_FILE).scan()
    assert result.parsed == 6
    assert sorted(a.package_name for a in result.apps) == [
        "com.example.basic",
        "com.example.maxsdk",
    ]


async def test_android_inventory_through_adb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pm list + pulled APKs + dumpsys times and data sizes; an APK version is pulled once."""
    log = tmp_path / "adb.log"
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    platform = AndroidPlatform(
        adb=str(FIXTURES / "adb" / "fake_adb.py"), state_dir=tmp_path / "state"
    )
    apps = {a.package_name: a for a in await platform.installed_apps()}
    basic = apps["com.example.basic"]
    assert (basic.version_code, basic.label, basic.cert_md5) == (
        2,
        "Basic App",
        expected_apks()["basic-v2.apk"]["certMd5"],
    )
    assert basic.first_installed == 1704164645000 and basic.data_size == 4096
    assert apps["com.android.settings"].version_code == 30
    await platform.installed_apps()
    assert log.read_text().count("pull ") == 2


async def test_change_detection_one_report_each(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """Install, upgrade, remove: exactly one inventory report each; none when nothing changed."""
    from agent.platforms.linux import LinuxPlatform

    apks = tmp_path / "apks"
    apks.mkdir()
    agent, transport = make_agent(server.base, tmp_path / "state")
    agent.platform = LinuxPlatform(
        state_dir=tmp_path / "state", apk_dir=apks, facts={"hardware_info": {"serial_no": "S1"}}
    )

    async def reports() -> int:
        transport.names.clear()
        await agent.run_once()
        return transport.names.count("apps")

    assert await reports() == 1  # first inventory (server asks)
    assert await reports() == 0
    shutil.copy(APKS / "basic-v1.apk", apks / "basic.apk")
    assert await reports() == 1
    assert await reports() == 0
    shutil.copy(APKS / "basic-v2.apk", apks / "basic.apk")
    assert await reports() == 1
    (apks / "basic.apk").unlink()
    assert await reports() == 1
    assert await reports() == 0
    installed = (await admin.get("/ota/api/device/app/installed", serialNo="S1")).data
    assert installed["apps"] == []


async def test_a_slow_scan_does_not_hold_check_ins(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """While a long scan runs, check-ins go out without an inventory; the next one reports it."""
    import asyncio

    from agent.platforms.base import AppRecord, HardwareInfo
    from agent.platforms.simulated import SimulatedPlatform

    release = asyncio.Event()

    class SlowScan(SimulatedPlatform):
        inventory_in_memory = False  # a scan that takes its time, as a rig's does

        async def installed_apps(self) -> list[AppRecord]:
            await release.wait()
            return [AppRecord(package_name="com.slow", version_code=1)]

    agent, transport = make_agent(
        server.base, tmp_path / "state", platform=SlowScan(HardwareInfo(serial_no="S1"))
    )
    agent.scan_wait_s = 0.05
    await agent.checkin()
    await agent.flush()
    assert "apps" not in transport.names
    release.set()
    await agent.checkin()
    await agent.flush()
    assert transport.names.count("apps") == 1
    installed = (await admin.get("/ota/api/device/app/installed", serialNo="S1")).data
    assert [a["packageName"] for a in installed["apps"]] == ["com.slow"]


# -- item 5: an unreadable APK folder never becomes an empty inventory ----------------------------


def _agent_on(server: Server, tmp_path: Path, apks: Path) -> tuple[Agent, RecordingTransport]:
    from agent.platforms.linux import LinuxPlatform

    agent, transport = make_agent(server.base, tmp_path / "state")
    agent.platform = LinuxPlatform(
        state_dir=tmp_path / "state", apk_dir=apks, facts={"hardware_info": {"serial_no": "S1"}}
    )
    return agent, transport


@pytest.mark.parametrize("gone", ["removed", "replaced_by_a_file"])
async def test_apk_dir_gone_after_enrollment_sends_no_inventory(
    server: Server, admin: Client, tmp_path: Path, gone: str
) -> None:
    """The folder vanishes (unmounted, removed, a file in its place) after a good report: the
    scan fails with an error naming --apk-dir, no inventory is sent, the server keeps the last
    good one; when the folder is back, the agent reports normally again."""
    apks = tree(tmp_path / "apks", ["basic-v1.apk"])
    agent, transport = _agent_on(server, tmp_path, apks)
    await agent.run_once()
    assert transport.names.count("apps") == 1
    shutil.rmtree(apks)
    if gone == "replaced_by_a_file":
        apks.write_text("not a folder")
    transport.names.clear()
    with capture_logs() as logs, pytest.raises(PlatformError) as caught:
        await agent.run_once()
    assert f"--apk-dir {apks}: no such folder" in str(caught.value)
    assert "apps" not in transport.names
    assert "checkin" in transport.names  # the device still checks in, with the last inventory
    assert any(e["event"] == "inventory.source_unreadable" for e in logs)
    assert any(e["event"] == "inventory.scan_failed" for e in logs)
    installed = (await admin.get("/ota/api/device/app/installed", serialNo="S1")).data
    assert [a["packageName"] for a in installed["apps"]] == ["com.example.basic"]
    apks.unlink(missing_ok=True)
    tree(apks, ["maxsdk.apk"])
    transport.names.clear()
    await agent.run_once()
    assert transport.names.count("apps") == 1
    installed = (await admin.get("/ota/api/device/app/installed", serialNo="S1")).data
    assert [a["packageName"] for a in installed["apps"]] == ["com.example.maxsdk"]


async def test_apk_dir_removed_during_a_scan_fails_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that disappears between listing and stat fails the scan (it is not an
    inventory of nothing) and leaves the cache as it was."""
    root = tree(tmp_path / "apks", ["basic-v1.apk", "maxsdk.apk"])
    scanner = InventoryScanner(root, tmp_path / CACHE_FILE)
    assert len((await scanner.scan()).apps) == 2
    cached = (tmp_path / CACHE_FILE).read_text()
    real_stat_all = inventory.stat_all

    def unmount_then_stat(apps: list[inventory.AppFiles]) -> Any:
        shutil.rmtree(root)
        return real_stat_all(apps)

    monkeypatch.setattr(inventory, "stat_all", unmount_then_stat)
    with pytest.raises(PlatformError, match="no such folder"):
        await scanner.scan()
    assert (tmp_path / CACHE_FILE).read_text() == cached


async def test_unlistable_apk_dir_fails_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that cannot be listed (permission denied; the tests run as root, where chmod
    does not stop reads, so the refusal is injected) fails the scan, as do missing folders."""
    root = tree(tmp_path / "apks", ["basic-v1.apk"])
    real_scandir = os.scandir

    def refuse(path: Any = ".") -> Any:
        if Path(path) == root:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    assert inventory.folder_problem(root) == "permission denied"
    with pytest.raises(PlatformError, match="permission denied"):
        await InventoryScanner(root, tmp_path / CACHE_FILE).scan()
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert inventory.folder_problem(root) is None
    assert inventory.folder_problem(tmp_path / "missing") == "not found"
    assert inventory.folder_problem(root / "basic-v1.apk") == "it is a file"
    assert inventory.folder_problem(root / "basic-v1.apk" / "below") == "not a directory"


@pytest.mark.parametrize(
    ("command", "bad"),
    [("run", "missing"), ("run", "file"), ("inventory", "missing"), ("snapshot", "file")],
)
async def test_cli_bad_apk_dir_is_exit_2_one_line_nothing_sent(
    tmp_path: Path, command: str, bad: str
) -> None:
    """run, inventory and snapshot with --apk-dir naming a missing folder or a file exit 2
    with one line naming the flag; nothing reaches the server and no snapshot is written."""
    from tests.agent.test_cli import agent_cli, facts_file

    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listener = await asyncio.start_server(count, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    apks = tmp_path / "apks"
    if bad == "file":
        apks.write_text("oops")
    args = [
        command,
        "--platform",
        "linux",
        "--state-dir",
        str(tmp_path / "state"),
        "--facts",
        str(facts_file(tmp_path)),
        "--apk-dir",
        str(apks),
    ]
    if command == "run":
        args += ["--server", f"http://127.0.0.1:{port}", "--api-key", "k", "--once"]
        args += ["--admin-email", "admin@alpha.test", "--admin-password", "pw-alpha"]
    if command == "snapshot":
        args += ["--output", str(tmp_path / "device.json")]
    try:
        code, out, err = await agent_cli(*args)
    finally:
        listener.close()
        await listener.wait_closed()
    reason = "not found" if bad == "missing" else "it is a file"
    assert code == 2, err
    assert err == f"midm-agent: error: --apk-dir {apks}: no such folder ({reason})\n"
    assert out == "" and connections == 0
    assert not (tmp_path / "device.json").exists()


# -- item 6: a real APK without versionCode is version 0 -----------------------------------------


async def test_apk_without_version_code_is_reported_and_uploadable(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """noversion.apk (no versionCode, no versionName in its manifest) is in the inventory as
    versionCode 0 with versionName "", and the server's app upload accepts it."""
    agent, transport = _agent_on(server, tmp_path, tree(tmp_path / "apks", ["noversion.apk"]))
    await agent.run_once()
    assert transport.names.count("apps") == 1
    installed = (await admin.get("/ota/api/device/app/installed", serialNo="S1")).data
    assert [(a["packageName"], a["versionCode"], a["versionName"]) for a in installed["apps"]] == [
        ("com.example.noversion", 0, "")
    ]
    uploaded = await admin.upload_apk("noversion.apk")
    assert uploaded.status == 200, uploaded.body
    info = uploaded.data["appInfo"]
    assert (info["packageName"], info["versionCode"], info["versionName"]) == (
        "com.example.noversion",
        0,
        "",
    )


# -- item 7: firstInstalled <= lastUpdated ---------------------------------------------------------

T1, T2, T3 = 1_600_000_000_000, 1_650_000_000_000, 1_700_000_000_000  # epoch ms, in the past


def put(source: str, target: Path, mtime_ms: int) -> None:
    """Copy an APK in keeping an old mtime (as `cp -p`, rsync -a or tar do): ctime is now."""
    shutil.copy(APKS / source, target)
    os.utime(target, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))


async def test_copied_apk_is_not_installed_after_its_update(tmp_path: Path) -> None:
    """A copy that keeps its old mtime (ctime = now) reports firstInstalled <= lastUpdated."""
    root = tmp_path / "apks"
    root.mkdir()
    put("basic-v1.apk", root / "basic.apk", T1)
    [app] = (await InventoryScanner(root, tmp_path / CACHE_FILE).scan()).apps
    assert app.first_installed is not None and app.last_updated is not None
    assert app.first_installed <= app.last_updated == T1


async def test_first_installed_survives_upgrades_and_restarts(tmp_path: Path) -> None:
    """firstInstalled is remembered per package in the state dir: an upgrade (even read by a
    new scanner after a restart) keeps it while lastUpdated moves; removing the package
    forgets it, so a reinstall starts again."""
    root = tmp_path / "apks"
    root.mkdir()
    cache = tmp_path / CACHE_FILE
    put("basic-v1.apk", root / "basic.apk", T1)
    [first] = (await InventoryScanner(root, cache).scan()).apps
    assert (first.first_installed, first.last_updated) == (T1, T1)
    put("basic-v2.apk", root / "basic.apk", T2)
    [upgraded] = (await InventoryScanner(root, cache).scan()).apps
    assert (upgraded.version_code, upgraded.first_installed, upgraded.last_updated) == (2, T1, T2)
    scanner = InventoryScanner(root, cache)
    (root / "basic.apk").unlink()
    assert (await scanner.scan()).apps == []
    put("basic-v1.apk", root / "basic.apk", T3)
    [again] = (await scanner.scan()).apps
    assert (again.first_installed, again.last_updated) == (T3, T3)


async def test_cache_of_an_older_agent_is_kept(tmp_path: Path) -> None:
    """A cache written before firstInstalled was remembered loads as it is (nothing parsed
    again); a firstInstalled map that is not integers discards the cache with a warning."""
    root = tree(tmp_path / "apks", ["basic-v1.apk"])
    cache = tmp_path / CACHE_FILE
    await InventoryScanner(root, cache).scan()
    values = json.loads(cache.read_text())
    assert values["firstInstalled"].keys() == {"com.example.basic"}
    cache.write_text(json.dumps({"version": 1, "entries": values["entries"]}))
    with capture_logs() as logs:
        assert (await InventoryScanner(root, cache).scan()).parsed == 0
    assert not [e for e in logs if e["event"] == "inventory.cache_discarded"]
    cache.write_text(json.dumps({**values, "firstInstalled": {"com.example.basic": "x"}}))
    with capture_logs() as logs:
        assert (await InventoryScanner(root, cache).scan()).parsed == 1
    assert [e["event"] for e in logs] == ["inventory.cache_discarded"]


@pytest.mark.parametrize(
    ("remembered", "ctime", "mtime", "first", "last"),
    [
        (None, T2, T2, T2, T2),  # plain copy: ctime == mtime
        (None, T3, T1, T1, T1),  # cp -p: old mtime, new ctime (the bug: first was T3)
        (None, T1, T3, T1, T3),  # mtime set in the future of the change time
        (T1, T3, T3, T1, T3),  # upgraded in place: first stays
        (T2, T3, T1, T1, T1),  # an older copy put back: first follows it down
        (None, -5, -10, 0, 0),  # mtime before 1970 (some build tools): clamped to 0
    ],
)
def test_app_times_table(
    remembered: int | None, ctime: int, mtime: int, first: int, last: int
) -> None:
    """lastUpdated = mtime; firstInstalled = min(remembered, ctime, lastUpdated); both >= 0."""
    from agent.apk.times import app_times

    times = app_times(remembered=remembered, ctime_ms=ctime, mtime_ms=mtime)
    assert (times.first_installed, times.last_updated) == (first, last)


@given(
    remembered=st.none() | st.integers(-(2**62), 2**62),
    ctime=st.integers(-(2**62), 2**62),
    mtime=st.integers(-(2**62), 2**62),
)
def test_first_installed_never_after_last_updated(
    remembered: int | None, ctime: int, mtime: int
) -> None:
    """For any file times and remembered first sighting: 0 <= firstInstalled <= lastUpdated,
    and firstInstalled never moves later than what was remembered."""
    from agent.apk.times import app_times

    times = app_times(remembered=remembered, ctime_ms=ctime, mtime_ms=mtime)
    assert 0 <= times.first_installed <= times.last_updated
    if remembered is not None:
        assert times.first_installed <= max(0, remembered)


@pytest.mark.parametrize(
    ("given", "reported"),
    [
        ((T1, T3), (T1, T3)),
        ((T3, T1), (T1, T1)),  # the device clock jumped back between install and update
        ((None, T1), (None, T1)),
        ((T1, None), (T1, None)),
        ((-5, -1), (0, 0)),
    ],
)
def test_platform_times_are_ordered(
    given: tuple[int | None, int | None], reported: tuple[int | None, int | None]
) -> None:
    """Times a platform is told (Android's dumpsys) keep 0 <= firstInstalled <= lastUpdated."""
    from agent.apk.times import ordered_times

    assert ordered_times(*given) == reported
