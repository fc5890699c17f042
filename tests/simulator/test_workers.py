"""`midm-sim run --workers W`: W shard processes on one machine against one embedded server,
merged into one report. A fleet run as one worker and as three shards plans the same devices
and counts the same; the exit code is the merged expectations'; Ctrl-C stops the workers and
merges their partial reports; a worker that fails fails the run in one line; credentials never
reach a command line."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulator.plan.expand import expand
from simulator.plan.shards import Shard, select, serials_digest
from simulator.runner import RunSettings
from simulator.scenario import load
from simulator.workers import Target, child_command, child_env
from tests.simulator.test_run import port_closed

SIM = Path(sys.executable).parent / "midm-sim"
DEVICES = 30
SCENARIO = """
[scenario]
name = "sharded"
duration_s = 20
devices = 30
time_scale = 5
seed = 7
serial_prefix = "W-"

[catalog.apps.app-1]
package = "com.example.app"
version_code = 1

[catalog.apps.app-2]
package = "com.example.app"
version_code = 2

[kinds.box]
share = 0.6
manufacturer = "Acme"
model = "B1"
apps = ["app-1"]
group = "fleet"

[kinds.box.build]
fingerprint = "acme/b1/b1:13/A/1:user/release-keys"
device_id = "b1"

[kinds.pad]
share = 0.4
manufacturer = "Acme"
model = "P1"
apps = ["app-1"]
group = "fleet"
sync_spread_s = 1

[kinds.pad.build]
fingerprint = "acme/p1/p1:14/B/2:user/release-keys"
device_id = "p1"

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
enrolled = 'devices.enrolled == 30'
saved_once = 'devices.saved_twice == 0'
consistent = 'consistency.mismatches == 0'
impossible = 'devices.enrolled > 30'
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "sharded.toml"
    path.write_text(SCENARIO)
    return path


def sim(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIM), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=110
    )


def report_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return data


DETERMINISTIC = (  # request counts that do not depend on timing
    "register",
    "admin:app/upload",
    "admin:device/group/save",
    "admin:device/save",
    "admin:profile/save",
)


def test_one_worker_and_three_shards_plan_the_same_devices_and_count_the_same(
    scenario: Path, tmp_path: Path
) -> None:
    """The same scenario as one process and as `--workers 3` (three shard processes against
    one embedded server, merged): one plan hash; each shard ran the devices the plan gives it
    and together they are the fleet; devices planned, enrolled and failed, register and admin
    write counts, convergence (scoped, applied) and consistency are the same; both exit 1,
    naming the one expectation that cannot hold."""
    one = sim("run", scenario, "--report", tmp_path / "one", "--no-progress", cwd=tmp_path)
    three = sim(
        "run", scenario, "--workers", "3", "--report", tmp_path / "three", "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    for done in (one, three):
        assert done.returncode == 1, done.stderr + done.stdout
        assert "midm-sim: expectation failed: impossible" in done.stderr
        assert "expectation failed: converged" not in done.stderr, done.stderr
    a, b = report_of(tmp_path / "one"), report_of(tmp_path / "three")
    assert a["scenario"]["plan_hash"] == b["scenario"]["plan_hash"]
    plan = expand(load(scenario), 7)
    assert a["scenario"]["plan"] == b["scenario"]["plan"] == plan.to_json()
    parts = b["shard"]["merged"]
    assert [p["index"] for p in parts] == [0, 1, 2]
    assert len({p["run_id"] for p in parts}) == 1
    for part in parts:
        mine = select(plan, Shard(index=part["index"], count=3))
        assert part["devices"] == len(mine)
        assert part["serials_sha256"] == serials_digest(mine)
    assert sum(p["devices"] for p in parts) == DEVICES
    for key in ("planned", "started", "enrolled", "failed", "saved_twice"):
        assert a["devices"][key] == b["devices"][key], key
    assert b["devices"]["enrolled"] == DEVICES
    for key in DETERMINISTIC:
        assert a["requests"][key]["count"] == b["requests"][key]["count"], key
    assert b["requests"]["register"]["count"] == DEVICES
    assert b["requests"]["admin:auth"]["count"] == 3  # one login a worker
    for field in ("scoped", "applied", "failed"):
        assert a["convergence"]["update"][field] == b["convergence"]["update"][field], field
    assert b["convergence"]["update"]["applied"] == DEVICES
    assert a["consistency"] == b["consistency"] == {"checked": DEVICES, "mismatches": []}
    assert [(e["name"], e["passed"]) for e in a["expectations"]] == [
        (e["name"], e["passed"]) for e in b["expectations"]
    ]
    assert [w["exit"] for w in b["workers"]] == [0, 0, 0]
    assert b["generator"]["processes"] == 3
    assert b["server"]["cpu_s"] > 0 or not Path("/proc/self/stat").exists()
    assert [r["action"] for r in b["admin_timeline"]] == [r["action"] for r in a["admin_timeline"]]
    for index in range(3):  # each shard's own report and log are kept beside the merged one
        shard = report_of(tmp_path / "three" / f"shard-{index}")
        assert shard["shard"]["index"] == index
        assert shard["expectations"] == []
        assert (tmp_path / "three" / f"shard-{index}" / "worker.log").is_file()
    assert port_closed(b["target"])


def test_ctrl_c_stops_the_workers_and_merges_their_partial_reports(
    scenario: Path, tmp_path: Path
) -> None:
    """SIGINT once both workers run their fleets: each stops cleanly and writes its partial
    report, the parent merges them (partial), exits 130, and neither a worker nor the embedded
    server is left running."""
    command = [SIM, "run", scenario, "--workers", "2", "--duration", "3000"]
    process = subprocess.Popen(
        [*map(str, command), "--report", str(tmp_path / "r"), "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        running: set[str] = set()
        for line in iter(process.stderr.readline, ""):  # the workers' first progress lines
            if line.startswith("shard ") and ": t=" in line:
                running.add(line.split(":")[0])
                if len(running) == 2:
                    break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "interrupted" in err
    merged = report_of(tmp_path / "r")
    assert merged["partial"] is True
    assert [p["index"] for p in merged["shard"]["merged"]] == [0, 1]
    assert merged["devices"]["planned"] == DEVICES
    assert [w["exit"] for w in merged["workers"]] == [130, 130]
    assert port_closed(merged["target"])
    if Path("/proc").is_dir():
        assert not any(Path(f"/proc/{w['pid']}").exists() for w in merged["workers"])


def test_a_failing_worker_fails_the_run_in_one_line(tmp_path: Path) -> None:
    """Workers against a target that refuses connections: each says why (relayed, prefixed
    with its shard); the parent's own error is one line naming the worker, exit 3."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = sim(
        "run", "--workers", "2", "--target", f"http://127.0.0.1:{port}", "--api-key", "k",
        "--admin-email", "a@b.test", "--admin-password", "p", "--report", tmp_path / "r",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    failed = re.match(r"midm-sim: error: worker ([01])/2 failed \(exit 3\): ", lines[-1])
    assert failed, lines
    assert "cannot reach" in lines[-1]
    # the failing worker's own line, relayed; the other may be stopped before it says anything
    shard = failed.group(1)
    assert any(line.startswith(f"shard {shard}/2: midm-sim: error: cannot reach") for line in lines)
    assert not (tmp_path / "r" / "report.json").exists()


def test_workers_get_the_plan_on_their_command_line_and_credentials_in_their_environment() -> None:
    """A worker's argv repeats the parent's plan settings (so its plan hash is the parent's)
    and carries no secret: the API key and the admin's login travel in its environment."""
    settings = RunSettings(
        scenario=Path("s.toml"),
        devices=30,
        duration_s=2.5,
        seed=7,
        time_scale=0.1 + 0.2,  # a float that must round-trip exactly
        workers=3,
        allow_remote=True,
        log_level="info",
    )
    target = Target(
        url="http://10.0.0.5:8080", api_key="KEY-1", admin_email="ops@x", admin_password="PW-2"
    )
    command = child_command(
        settings, Shard(index=1, count=3), run_id="r1", url=target.url, directory=Path("out")
    )
    assert command[:6] == [sys.executable, "-m", "simulator.cli", "--log-level", "info", "run"]
    pairs = dict(itertools.pairwise(command))
    assert pairs["--shard"] == "1/3" and pairs["--run-id"] == "r1"
    assert pairs["--target"] == target.url and pairs["--report"] == "out"
    assert float(pairs["--time-scale"]) == 0.1 + 0.2
    assert (pairs["--devices"], pairs["--duration"], pairs["--seed"]) == ("30", "2.5", "7")
    assert "--allow-remote" in command
    assert "--metrics-port" not in command
    assert not {"KEY-1", "ops@x", "PW-2"} & set(command)
    served = dataclasses.replace(settings, metrics_port=9400, metrics_host="0.0.0.0")  # noqa: S104
    for index, port in ((0, "9400"), (2, "9402")):
        words = child_command(
            served, Shard(index=index, count=3), run_id="r1", url=target.url, directory=Path("o")
        )
        pairs = dict(itertools.pairwise(words))
        assert (pairs["--metrics-port"], pairs["--metrics-host"]) == (port, "0.0.0.0")  # noqa: S104
    env = child_env({"PATH": "/bin", "MIDM_API_KEY": "stale"}, target)
    assert env == {
        "PATH": "/bin",
        "MIDM_API_KEY": "KEY-1",
        "MIDM_ADMIN_EMAIL": "ops@x",
        "MIDM_ADMIN_PASSWORD": "PW-2",
    }
    assert "PW-2" not in repr(target)
