"""`midm-sim` command line: bad settings are exit 2 and an unreachable target exit 3, each in
one line on stderr and without starting anything; `validate` prints the plan."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.cli import default_scenario
from simulator.errors import SettingsError
from simulator.runner import PROBE_TIMEOUT_S, check_target

SIM = Path(sys.executable).parent / "midm-sim"
CREDS = ("--api-key", "k", "--admin-email", "a@b.test", "--admin-password", "p")


def sim(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIM), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("midm-sim"), text
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--workers", "2", "--shard", "0/2"), "--workers with --shard 0/2: not supported"),
        (("--shard", "1/2"), "--shard 1/2 needs --target"),
        (("--metrics-port", "70000"), "argument --metrics-port: 70000 is not a port"),
        (("--target", "http://10.1.2.3:8080", *CREDS), "--allow-remote"),
        (("--target", "http://example.com", *CREDS), "not a loopback address"),
        (("--target", "ftp://127.0.0.1", *CREDS), "http:// or https://"),
        (("--target", "http://127.0.0.1:9"), "--target needs --api-key"),
        (("--devices", "0"), "--devices"),
        (("--time-scale", "-1"), "--time-scale"),
        (("--bogus",), "unrecognized arguments"),
    ],
)
def test_bad_settings_are_exit_2_in_one_line(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    done = sim("run", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in one_line(done.stderr)
    assert not (tmp_path / "sim-report").exists()


def test_a_bad_scenario_is_exit_2_naming_file_line_and_key(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text("[scenario]\nduration_s = 10\nspeed = 3\n")
    done = sim("run", scenario, cwd=tmp_path)
    assert done.returncode == 2
    assert f"{scenario}:3: scenario.speed" in one_line(done.stderr)
    missing = sim("run", tmp_path / "none.toml", cwd=tmp_path)
    assert missing.returncode == 2
    assert "none.toml" in one_line(missing.stderr)


def test_a_refused_target_is_exit_3_at_once(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = sim("run", "--target", f"http://127.0.0.1:{port}", *CREDS, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "cannot reach" in one_line(done.stderr)


@pytest.fixture
def silent_target() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_silent_target_is_exit_3_within_10_s(silent_target: str, tmp_path: Path) -> None:
    """A target that accepts and never answers: exit 3, one line naming the probe's timeout.
    The bound is the probe's setting (under 10 s), not a wall-clock race on a loaded machine."""
    done = sim("run", "--target", silent_target, *CREDS, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "no answer within" in one_line(done.stderr)
    assert PROBE_TIMEOUT_S < 10


def test_validate_prints_the_plan_without_contacting_anything(tmp_path: Path) -> None:
    done = sim("validate", default_scenario(), "--devices", "20", "--seed", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fleet: 20 devices" in done.stdout
    assert "seed 3" in done.stdout


def test_merge_refuses_a_folder_without_a_report(tmp_path: Path) -> None:
    done = sim("merge", tmp_path, "--report", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    assert "not a readable report" in one_line(done.stderr)
    assert not (tmp_path / "out").exists()


def test_the_default_scenario_is_the_shipped_quickstart() -> None:
    path = default_scenario()
    assert path.name == "quickstart.toml"
    assert path.parent.name == "scenarios"


def test_check_target_accepts_loopback_and_remote_only_when_allowed() -> None:
    check_target("http://127.0.0.1:8080", allow_remote=False)
    check_target("https://[::1]/", allow_remote=False)
    check_target("https://midm.example.com", allow_remote=True)
    with pytest.raises(SettingsError, match="--allow-remote"):
        check_target("https://midm.example.com", allow_remote=False)
