"""`midm-agent` as a rig runs it: run --once, run until SIGTERM, status, facts, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

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
    async with asyncio.timeout(60):
        out, err = await process.communicate()
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
    """run --once enrolls, checks in and exits 0; status shows enrollment without the token."""
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
