"""`midm-sim run` end to end (the CLI in a subprocess, the embedded reference server, real
agents), and the pure parts of a run: kinds' schedules, saves counted, targets, consistency."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from agent.models import BuildInfo
from agent.transport.base import Exchange
from simulator.consistency import Belief, Record, apps_of_wire, compare, newest_builds
from simulator.fleet import change_times, state_at
from simulator.plan.model import (
    ActionKind,
    AdminAction,
    DeviceKind,
    Plan,
    PlannedDevice,
    PowerStep,
    Window,
)
from simulator.runner import Relay, checkin_interval, expected_saves, is_loopback, saved_twice

SIM = Path(sys.executable).parent / "midm-sim"
DEVICES = 50
SCENARIO = """
[scenario]
name = "small"
duration_s = 20
time_scale = 5
seed = 7
serial_prefix = "T-"

[catalog.apps.app-1]
package = "com.example.app"
version_code = 1

[catalog.apps.app-2]
package = "com.example.app"
version_code = 2

[kinds.box]
count = 50
manufacturer = "Acme"
model = "B1"
apps = ["app-1"]
group = "fleet"

[kinds.box.build]
fingerprint = "acme/b1/b1:13/A/1:user/release-keys"
build_date = 1690000000
device_id = "b1"

[arrival]
process = "even"
rate = 100

[[timeline]]
at_s = 0
action = "create_group"
name = "fleet"

[[timeline]]
at_s = 0
action = "upload_app"
app = "app-2"

[[timeline]]
at_s = 4
action = "save_profile"
name = "update"

[timeline.body]
scope = { group = ["fleet"] }
apps = { install = [{ app = "app-2", silent_install = true }] }

[expectations]
converged = 'convergence("update").fraction >= 0.99'
enrolled = 'devices.enrolled == 50'
saved_once = 'devices.saved_twice == 0'
consistent = 'consistency.mismatches == 0'
"""
REPORT_KEYS = {
    "schema", "scenario", "seed", "shard", "versions", "target", "started", "duration_s",
    "devices", "requests", "timeline", "convergence", "expectations", "generator", "consistency",
}  # fmt: skip


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SCENARIO)
    return path


def sim(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIM), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=110
    )


def report_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return data


def port_closed(target: str) -> bool:
    """The embedded server's port refuses connections (its process is gone)."""
    url = urlsplit(target.split()[0])
    assert url.hostname is not None and url.port is not None
    try:
        socket.create_connection((url.hostname, url.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_small_fleet_runs_end_to_end(scenario: Path, tmp_path: Path) -> None:
    """50 real agents against the embedded server through the CLI: exit 0, a report with the §9
    keys, every device enrolled and consistent, the rollout converged, the server stopped."""
    done = sim("run", scenario, "--report", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    report = report_of(tmp_path / "r")
    assert set(report) >= REPORT_KEYS
    assert report["schema"] == "midm-sim-report/1"
    assert {"name", "sha256", "plan"} <= set(report["scenario"])
    assert report["devices"]["planned"] == DEVICES
    assert report["devices"]["enrolled"] == DEVICES
    assert report["devices"]["failed"] == 0
    assert report["consistency"] == {"checked": DEVICES, "mismatches": []}
    assert report["requests"]["register"]["count"] == DEVICES
    checkin = report["requests"]["checkin"]
    assert {"count", "errors", "latency_ms", "hdr"} <= set(checkin)
    assert set(checkin["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert report["convergence"]["update"]["applied"] == DEVICES
    assert {"cpu_s", "rss_mb", "send_lag_ms", "saturated"} <= set(report["generator"])
    assert {"freezes", "collections", "max_pause_ms"} <= set(report["generator"]["gc"])
    assert all(e["passed"] for e in report["expectations"])
    assert (tmp_path / "r" / "report.html").is_file()
    if Path("/proc/self/stat").exists():  # the embedded server's CPU, beside the generator's
        assert report["server"]["cpu_s"] > 0
    assert port_closed(report["target"])


FAULTS = """
[[faults]]
type = "status"
at_s = 2
until_s = 5
status = 503
retry_after_s = 1
endpoints = ["checkin"]

[[faults]]
type = "latency"
at_s = 0
latency_ms = 500
jitter_ms = 100
endpoints = ["profiles"]

[[faults]]
type = "truncate"
at_s = 0
at_fraction = 0.5

[[faults]]
type = "outage"
at_s = 9
until_s = 11
"""


def test_faults_hit_the_devices_and_nothing_is_lost(tmp_path: Path) -> None:
    """503 bursts with Retry-After, slow profile answers, downloads cut at half, an outage:
    the agents see each
    (the report counts them), recover, converge, and every event they queued is on the server
    exactly once."""
    path = tmp_path / "faulty.toml"
    path.write_text(
        SCENARIO.replace("duration_s = 20", "duration_s = 45")  # a cut download waits 15 s
        .replace("[expectations]", FAULTS + "\n[expectations]")
        # how many converge by the end depends on the machine's speed: not an expectation here
        .replace("converged = 'convergence(\"update\").fraction >= 0.99'\n", "")
        + "nothing_lost = 'events.lost == 0 and events.duplicated == 0'\n"
    )
    done = sim("run", path, "--report", tmp_path / "r", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    report = report_of(tmp_path / "r")
    checkin_errors = report["requests"]["checkin"]["errors"]
    assert sum(n for c, n in checkin_errors.items() if "5xx" in c or "503" in c) > 0, checkin_errors
    assert sum(sum(r["errors"].values()) for r in report["requests"].values()) > 0
    assert report["requests"]["profiles"]["latency_ms"]["p50"] >= 500 / 5  # time scale 5
    assert report["requests"]["file"]["count"] > DEVICES  # cut at half, then resumed
    assert report["events"]["queued"] > 0
    assert (report["events"]["lost"], report["events"]["duplicated"]) == (0, 0)
    assert report["convergence"]["update"]["applied"] > 0
    assert report["consistency"]["mismatches"] == []
    assert [f["type"] for f in report["scenario"]["plan"]["faults"]] == [
        "status", "latency", "truncate", "outage",
    ]  # fmt: skip


def test_the_lean_transport_runs_the_same_fleet(scenario: Path, tmp_path: Path) -> None:
    """`--transport lean`: the agents' requests go through the httptools pool; the same
    fleet enrolls, converges and is consistent."""
    done = sim(
        "run", scenario, "--transport", "lean", "--report", tmp_path / "r", "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    report = report_of(tmp_path / "r")
    assert report["generator"]["transport"] == "lean"
    assert report["devices"]["enrolled"] == DEVICES
    assert report["requests"]["checkin"]["count"] >= DEVICES
    assert report["convergence"]["update"]["applied"] == DEVICES
    assert report["consistency"]["mismatches"] == []


def test_the_same_seed_gives_the_same_plan(scenario: Path, tmp_path: Path) -> None:
    """Two runs with one seed have one plan hash (the same fleet and schedules); another seed
    gives another. `merge` adds the two runs' figures and refuses to mix in the third."""
    hashes = []
    for run, seed in enumerate(("11", "11", "12")):
        folder = tmp_path / f"r{run}"
        done = sim(
            "run", scenario, "--seed", seed, "--devices", "10", "--duration", "2",
            "--report", folder, "--no-progress", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        report = report_of(folder)
        assert report["seed"] == int(seed)
        hashes.append(report["scenario"]["plan_hash"])
    assert hashes[0] == hashes[1]
    assert hashes[2] != hashes[0]
    merged = sim(
        "merge", tmp_path / "r0", tmp_path / "r1", "--report", tmp_path / "m", cwd=tmp_path
    )
    assert merged.returncode in (0, 1), merged.stderr
    assert report_of(tmp_path / "m")["requests"]["register"]["count"] == 20  # added exactly
    refused = sim(
        "merge", tmp_path / "r0", tmp_path / "r2", "--report", tmp_path / "x", cwd=tmp_path
    )
    assert refused.returncode == 2  # not the same run


def test_ctrl_c_stops_cleanly_with_a_partial_report(scenario: Path, tmp_path: Path) -> None:
    """SIGINT once the fleet runs: exit 130, a partial report, the embedded server stopped."""
    command = [SIM, "run", scenario, "--duration", "3000", "--report", tmp_path / "r"]
    process = subprocess.Popen(
        [*map(str, command), "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in iter(process.stderr.readline, ""):  # the first progress line: running
            if "devices" in line:
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "interrupted" in err
    report = report_of(tmp_path / "r")
    assert report["partial"] is True
    assert report["devices"]["planned"] == DEVICES
    assert port_closed(report["target"])


# -- pure parts ----------------------------------------------------------------------------


def kind(**changes: Any) -> DeviceKind:
    values: dict[str, Any] = {
        "name": "k",
        "manufacturer": "Acme",
        "brand": "Acme",
        "model": "K",
        "build": BuildInfo(fingerprint="f1"),
    }
    values.update(changes)
    return DeviceKind(**values)


def test_a_kind_state_follows_its_power_steps_and_windows() -> None:
    """Power is the last step at or before t; sleep and offline windows are [start, end)."""
    k = kind(
        power=(PowerStep(at_s=0, ac=False, battery=40), PowerStep(at_s=30, ac=True, battery=50)),
        sleep=(Window(start_s=10, end_s=20),),
        offline=(Window(start_s=20, end_s=25),),
    )
    table = [
        (0.0, False, 40, False, False),
        (10.0, False, 40, True, False),
        (19.9, False, 40, True, False),
        (20.0, False, 40, False, True),
        (25.0, False, 40, False, False),
        (30.0, True, 50, False, False),
    ]
    for t, ac, battery, sleeping, offline in table:
        state = state_at(k, t)
        assert (state.ac, state.battery, state.sleeping, state.offline) == (
            ac,
            battery,
            sleeping,
            offline,
        ), t
    assert change_times(k) == [10, 20, 25, 30]


def plan_with(timeline: tuple[AdminAction, ...], intervals: tuple[float | None, ...]) -> Plan:
    kinds = {f"k{i}": kind(name=f"k{i}", checkin_interval_s=v) for i, v in enumerate(intervals)}
    return Plan(
        scenario="s",
        scenario_sha256="0",
        seed=1,
        duration_s=10,
        time_scale=1,
        kinds=kinds,
        devices=tuple(
            PlannedDevice(index=i, serial=f"S{i}", kind="k0", arrive_s=0, seed=i) for i in range(3)
        ),
        timeline=timeline,
        expectations=(),
    )


def test_saved_twice_counts_saves_beyond_the_bulk_save_and_the_timeline() -> None:
    """Each planned serial is saved once, plus once per timeline re-save naming it."""
    resave = AdminAction(at_s=5, action=ActionKind.RESAVE_DEVICES, args={"serials": ("S1",)})
    plan = plan_with((resave,), (None,))
    expected = expected_saves(plan)
    assert expected == {"S0": 1, "S1": 2, "S2": 1}
    assert saved_twice({"S0": 1, "S1": 2, "S2": 1}, expected) == 0
    assert saved_twice({"S0": 2, "S1": 2, "S2": 1, "X": 1}, expected) == 2


def test_the_embedded_server_checks_in_devices_as_often_as_the_keenest_kind() -> None:
    assert checkin_interval(plan_with((), (None, None))) is None
    assert checkin_interval(plan_with((), (None, 30.0, 12.5))) == 13


def test_loopback_targets() -> None:
    """Loopback addresses and localhost names only; names are not resolved."""
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "api.localhost"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "example.com", "0.0.0.0", "localhost.example.com"):  # noqa: S104
        assert not is_loopback(host), host


def test_the_relay_holds_exchanges_until_the_metrics_exist() -> None:
    relay = Relay()
    seen: list[Exchange] = []

    def exchange(name: str) -> Exchange:
        return Exchange(name=name, intended=0, started=0, duration=0, status=200, error=None)

    relay(exchange("a"))
    relay.attach(seen.append)
    relay(exchange("b"))
    assert [e.name for e in seen] == ["a", "b"]


def beliefs() -> Iterator[Belief]:
    yield Belief(serial="A", enrolled=True, apps={"p": 2}, build="f2", initial_build="f1")
    yield Belief(serial="B", enrolled=True, apps={"p": 1}, build="f1", initial_build="f1")
    yield Belief(serial="C", enrolled=False, apps={"p": 1}, build="f1", initial_build="f1")
    yield Belief(serial="D", enrolled=True, apps={}, build="f1", initial_build="f1")


def test_consistency_lists_each_disagreement() -> None:
    """Enrolled, apps (what each side has that the other lacks) and build (the newest installed
    image the server heard of, else the starting build); an unknown device is one mismatch."""
    records = {
        "A": Record(serial="A", enrolled=True, apps={"p": 2}, installed_build="f2"),
        "B": Record(serial="B", enrolled=True, apps={"p": 2, "q": 1}, installed_build="f2"),
        "C": Record(serial="C", enrolled=True, apps={}, installed_build=None),
    }
    found = [(m.serial, m.field, m.device, m.server) for m in compare(beliefs(), records)]
    assert found == [
        ("B", "apps", {"p": 1}, {"p": 2, "q": 1}),
        ("B", "build", "f1", "f2"),
        ("C", "enrolled", False, True),
        ("D", "device", True, None),
    ]


def test_the_server_record_of_builds_and_apps() -> None:
    """The newest `installed` build per device by `at`; apps by package with their versionCode."""
    events: list[dict[str, Any]] = [
        {"deviceUuid": "u1", "at": "2026-01-01T00:00:02.000Z", "build": "f3"},
        {"deviceUuid": "u1", "at": "2026-01-01T00:00:01.000Z", "build": "f2"},
        {"deviceUuid": "u2", "at": "2026-01-01T00:00:01.000Z", "build": None},
        {"deviceUuid": "zz", "at": "2026-01-01T00:00:01.000Z", "build": "f9"},
    ]
    assert newest_builds(events, {"u1": "A", "u2": "B"}) == {"A": "f3"}
    wire: list[dict[str, Any]] = [
        {"packageName": "p", "versionCode": 3},
        {"packageName": "q"},
        {"label": "x"},
    ]
    assert apps_of_wire(wire) == {"p": 3, "q": None}
