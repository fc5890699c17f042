"""`midm-agent` as a rig runs it: run --once, run until SIGTERM, status, facts, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.helpers import Client, Server

BIN = Path(sys.executable).parent / "midm-agent"


def environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MIDM_")}


async def agent_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(BIN),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or environ(),
    )
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:  # it hung: fail the test, leave no process behind
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def facts_file(tmp_path: Path, serial: str = "RIG-7") -> Path:
    path = tmp_path / "facts.json"
    path.write_text(
        json.dumps(
            {
                "hardware_info": {"serial_no": serial, "model": "NUC"},
                "build": {"fingerprint": "debian/12", "buildDate": 1700000000},
            }
        )
    )
    return path


def common(server: Server, tmp_path: Path) -> list[str]:
    (tmp_path / "apks").mkdir(exist_ok=True)  # a missing --apk-dir is an error (exit 2)
    return [
        "--server",
        server.base,
        "--api-key",
        "key-alpha",
        "--state-dir",
        str(tmp_path / "state"),
        "--platform",
        "linux",
        "--facts",
        str(facts_file(tmp_path)),
        "--apk-dir",
        str(tmp_path / "apks"),
    ]


async def test_run_once_then_status(server: Server, admin: Client, tmp_path: Path) -> None:
    """run --once enrolls, checks in and exits 0; status shows enrollment without the token,
    and the fingerprint of the device key the server bound."""
    code, _, err = await agent_cli(
        "run",
        *common(server, tmp_path),
        "--once",
        "--admin-email",
        "admin@alpha.test",
        "--admin-password",
        "pw-alpha",
    )
    assert code == 0, err
    found = (await admin.get("/ota/api/device/findBy", serialNo="RIG-7")).data
    assert found["enrolled"] is not None and found["profile"]["hardware_info"]["model"] == "NUC"
    code, out, _ = await agent_cli("status", "--state-dir", str(tmp_path / "state"))
    status = json.loads(out)
    assert code == 0 and status["enrolled"] and status["serial"] == "RIG-7"
    assert "token" not in status and status["queued_events"] == 0
    assert status["key_fingerprint"] is not None
    assert status["key_fingerprint"] == found["keyFingerprint"]
    assert (tmp_path / "state" / "state.json").stat().st_mode & 0o777 == 0o600


async def test_env_settings_and_sigterm(server: Server, admin: Client, tmp_path: Path) -> None:
    """MIDM_* settings work; SIGTERM stops a running agent cleanly (exit 0)."""
    env = {
        **environ(),
        "MIDM_SERVER": server.base,
        "MIDM_API_KEY": "key-alpha",
        "MIDM_STATE_DIR": str(tmp_path / "state"),
        "MIDM_PLATFORM": "linux",
        "MIDM_ADMIN_EMAIL": "admin@alpha.test",
        "MIDM_ADMIN_PASSWORD": "pw-alpha",
    }
    process = await asyncio.create_subprocess_exec(
        str(BIN),
        "run",
        "--facts",
        str(facts_file(tmp_path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while b"checkin.ok" not in await process.stderr.readline():
            pass
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        rest = await process.stderr.read()
        code = await process.wait()
    assert code == 0 and b"agent.stopped" in rest


async def test_failures_are_one_line(server: Server, tmp_path: Path) -> None:
    """Bad settings exit 2, an unreachable or refusing server exits 1; no traceback."""
    cases = [
        (["run", "--api-key", "k", "--state-dir", str(tmp_path)], 2, "no server"),
        (["run", "--server", "127.0.0.1:1", "--api-key", "k"], 2, "http://"),
        (
            [
                "run",
                "--server",
                "http://127.0.0.1:9",
                "--api-key",
                "k",
                "--state-dir",
                str(tmp_path / "s"),
                "--platform",
                "simulated",
                "--once",
            ],
            1,
            "cannot reach",
        ),
        (["run", *common(server, tmp_path), "--once"], 1, "not saved on the server"),
        (
            [
                "run",
                *common(server, tmp_path)[:-4],
                "--facts",
                str(tmp_path / "missing.json"),
                "--once",
            ],
            2,
            "cannot read",
        ),
    ]
    for args, expected, needle in cases:
        code, _, err = await agent_cli(*args)
        assert code == expected, (args, err)
        assert needle in err and "Traceback" not in err, err
        assert err.strip().count("\n") == 0 or "midm-agent: error" in err.splitlines()[-1]


async def test_facts_prints_platform_json(tmp_path: Path) -> None:
    """facts prints what the platform reads (with --facts overrides) as JSON."""
    code, out, err = await agent_cli(
        "facts",
        "--platform",
        "linux",
        "--facts",
        str(facts_file(tmp_path)),
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert code == 0, err
    facts = json.loads(out)
    assert (
        facts["hardware_info"]["serial_no"] == "RIG-7"
        and facts["build"]["fingerprint"] == "debian/12"
    )


async def test_inventory_and_snapshot(tmp_path: Path) -> None:
    """inventory lists the APK folder's apps; snapshot writes facts + inventory as one file."""
    import shutil

    from tests.helpers import APKS

    apks = tmp_path / "apks"
    apks.mkdir()
    shutil.copy(APKS / "basic-v1.apk", apks)
    shutil.copy(APKS / "corrupt-truncated.apk", apks)
    settings = [
        "--platform",
        "linux",
        "--facts",
        str(facts_file(tmp_path)),
        "--state-dir",
        str(tmp_path / "state"),
        "--apk-dir",
        str(apks),
    ]
    code, out, err = await agent_cli("inventory", "--json", *settings)
    assert code == 0, err
    assert [a["packageName"] for a in json.loads(out)] == ["com.example.basic"]
    assert "corrupt-truncated.apk" in err  # a structured warning names the bad file
    code, out, _ = await agent_cli("inventory", *settings)
    assert out.split("\t")[:2] == ["com.example.basic", "1"]
    target = tmp_path / "device.json"
    code, _, err = await agent_cli("snapshot", *settings, "--output", str(target))
    assert code == 0, err
    snapshot = json.loads(target.read_text())
    assert snapshot["hardware_info"]["serial_no"] == "RIG-7"
    assert snapshot["build"]["fingerprint"] == "debian/12"
    assert [a["packageName"] for a in snapshot["apps"]] == ["com.example.basic"]


@pytest.mark.parametrize("once", [["--once"], []], ids=["once", "running"])
async def test_wrong_admin_password_names_the_admin_flags(
    server: Server, tmp_path: Path, once: list[str]
) -> None:
    """A refused admin login points at --admin-email/--admin-password, not at --api-key; a
    running agent ends with it too (no retry can fix a wrong password) instead of retrying."""
    code, _, err = await agent_cli(
        "run",
        *common(server, tmp_path),
        *once,
        "--admin-email",
        "admin@alpha.test",
        "--admin-password",
        "wrong",
    )
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("midm-agent: error: ") and "Traceback" not in err, err
    assert "--admin-email/--admin-password" in line and "check --api-key" not in line, line


async def test_unusable_state_dir_is_a_bad_setting(tmp_path: Path) -> None:
    """A --state-dir that cannot be created or written exits 2 with one line naming it, before
    anything is sent to the server."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    for state_dir in (blocker / "state", blocker):
        code, out, err = await agent_cli(
            "run",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
            "--platform",
            "simulated",
            "--state-dir",
            str(state_dir),
            "--once",
        )
        assert code == 2, err
        assert out == "" and err.count("\n") == 1, err
        assert err.startswith(f"midm-agent: error: --state-dir {state_dir}: "), err


async def test_no_arguments_prints_help_and_exits_2() -> None:
    """`midm-agent` alone is a usage error: the help goes to stderr and the exit code is 2."""
    code, out, err = await agent_cli()
    assert code == 2 and out == "", out
    assert err.startswith("usage: midm-agent") and "run" in err, err
