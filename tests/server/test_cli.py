"""§8 `midm-server` as users run it: serve, first-site secrets, `site add/list`, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from server.config import ServerConfig
from server.store.db import Database
from tests.helpers import Client, fixed_clock, seed_sites

BIN = Path(sys.executable).parent


def env(**values: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIDM_")}
    return {**base, **values}


STOP_TIMEOUT_S = 30  # SIGTERM to exit; generous for a loaded machine, then SIGKILL


async def spawn_server(db: Path, environ: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "midm-server"),
        "--db",
        str(db),
        "--port",
        "0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )


async def until_listening(process: asyncio.subprocess.Process, lines: list[str]) -> str:
    """Collect log lines up to `server.listening`; return its URL."""
    assert process.stderr is not None
    async with asyncio.timeout(STOP_TIMEOUT_S):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, f"server exited before listening: {lines}"
            lines.append(line)
            event = json.loads(line)
            if event["event"] == "server.listening":
                return str(event["url"])


async def read_rest(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stderr is not None
    async for line in process.stderr:
        lines.append(line.decode())


async def stop_server(process: asyncio.subprocess.Process) -> int:
    """SIGTERM a running server, then wait for its exit."""
    process.send_signal(signal.SIGTERM)
    return await wait_exit(process)


async def wait_exit(process: asyncio.subprocess.Process) -> int:
    """Wait a bounded time for the exit; SIGKILL only as the last resort.

    Never signal a process that may have exited: Popen.send_signal() polls first and would reap
    it behind asyncio's child watcher, which then reports exit status 255."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            return await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"midm-server ignored SIGTERM for {STOP_TIMEOUT_S} s") from None


@asynccontextmanager
async def running_server(db: Path, environ: dict[str, str]) -> AsyncIterator[tuple[str, list[str]]]:
    """Start `midm-server --port 0`, yield its URL and its log lines once it listens; at the end
    SIGTERM it and expect exit 0 after `server.stopped`."""
    process = await spawn_server(db, environ)
    lines: list[str] = []
    try:
        url = await until_listening(process, lines)
        async with asyncio.TaskGroup() as group:
            group.create_task(read_rest(process, lines))  # keeps the pipe from filling up
            try:
                yield url, lines
            finally:
                code = await stop_server(process)
    finally:
        if process.returncode is None:  # failed before stop_server: do not leave it running
            process.kill()
            await process.wait()
    assert code == 0, lines
    assert any('"server.stopped"' in line for line in lines), lines


async def test_sigterm_as_soon_as_listening_stops_cleanly(tmp_path: Path) -> None:
    """`server.listening` means SIGTERM is handled: a SIGTERM sent the instant the line appears
    ends in `server.stopped` and exit 0 (five times, to give a start-up race its chances)."""
    db = tmp_path / "db.sqlite"
    for _ in range(5):
        process = await spawn_server(db, env(MIDM_API_KEY="k", MIDM_ADMIN_PASSWORD="pw"))
        lines: list[str] = []
        try:
            await until_listening(process, lines)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await read_rest(process, lines)
            code = await wait_exit(process)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert code == 0, lines
        assert json.loads(lines[-1])["event"] == "server.stopped", lines


async def test_serves_with_environment_credentials(tmp_path: Path) -> None:
    """MIDM_* seed the first site; the server answers with them; SIGTERM stops it cleanly."""
    environ = env(
        MIDM_SITE="lab",
        MIDM_API_KEY="k-lab",
        MIDM_ADMIN_EMAIL="qa@lab.test",
        MIDM_ADMIN_PASSWORD="s3cret-pw",
    )
    async with (
        running_server(tmp_path / "db.sqlite", environ) as (url, lines),
        aiohttp.ClientSession() as http,
    ):
        client = Client(http, url, "k-lab")
        await client.login("qa@lab.test", "s3cret-pw")
        verify = await client.get("/portal/V1/auth/token-verify", siteId="lab")
        assert verify.status == 200
    assert not any("s3cret-pw" in line for line in lines)
    assert not any("server.seed_ignored" in line for line in lines)  # they seeded the new db
    assert not (tmp_path / "db.sqlite.credentials.json").exists()


async def test_new_database_writes_generated_secrets_once(tmp_path: Path) -> None:
    """Without MIDM_* the generated key and password go to a 0600 file, not to the log."""
    db = tmp_path / "db.sqlite"
    async with running_server(db, env()) as (url, lines):
        credentials = tmp_path / "db.sqlite.credentials.json"
        assert credentials.stat().st_mode & 0o777 == 0o600
        secrets = json.loads(credentials.read_text())
        assert not any(secrets["adminPassword"] in line for line in lines)
        assert any(str(credentials) in line for line in lines)
        async with aiohttp.ClientSession() as http:
            client = Client(http, url, secrets["apiKey"])
            await client.login(secrets["adminEmail"], secrets["adminPassword"])
    async with running_server(db, env()) as (_, lines):
        assert not any('"server.first_site"' in line for line in lines)


async def test_seed_variables_on_an_existing_database_are_reported(tmp_path: Path) -> None:
    """MIDM_* set for a database that has its sites already: a `server.seed_ignored` warning
    names the variables (never their values) and the database, with a hint."""
    db = tmp_path / "db.sqlite"
    seed_sites(ServerConfig.for_db(db), fixed_clock(), ["alpha"])
    environ = env(MIDM_SITE="lab", MIDM_API_KEY="k-lab-value", MIDM_ADMIN_PASSWORD="pw-value")
    async with running_server(db, environ) as (_, lines):
        events = [json.loads(line) for line in lines]
    (warning,) = [e for e in events if e["event"] == "server.seed_ignored"]
    assert warning["level"] == "warning"
    assert warning["variables"] == ["MIDM_SITE", "MIDM_API_KEY", "MIDM_ADMIN_PASSWORD"]
    assert warning["db"] == str(db) and "--db" in warning["hint"]
    assert not any(value in line for line in lines for value in ("k-lab-value", "pw-value"))


def run_cli(*args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "midm-server"), *args],
        capture_output=True,
        text=True,
        env=environ or env(),
        timeout=60,
        check=False,
    )


async def test_site_add_and_list(tmp_path: Path) -> None:
    """`site add --json` prints the new site's secrets once; `site list` shows no secrets."""
    db = tmp_path / "db.sqlite"
    empty = Database(db)  # an existing database: `site add` does not create one
    empty.migrate()
    empty.close()
    added = run_cli(
        "site", "add", "field", "--db", str(db), "--admin-email", "ops@field.test", "--json"
    )
    assert added.returncode == 0, added.stderr
    created: dict[str, Any] = json.loads(added.stdout)
    assert created["site"] == "field" and created["adminEmail"] == "ops@field.test"
    assert created["apiKey"] and created["adminPassword"] and created["siteUuid"]
    listed = run_cli("site", "list", "--db", str(db), "--json")
    sites = json.loads(listed.stdout)
    assert [s["name"] for s in sites] == ["field"]
    assert created["apiKey"] not in listed.stdout and created["adminPassword"] not in listed.stdout
    again = run_cli("site", "add", "field", "--db", str(db))
    assert again.returncode != 0 and "exists already" in again.stderr
    assert "Traceback" not in again.stderr
    async with running_server(db, env()) as (url, _), aiohttp.ClientSession() as http:
        client = Client(http, url, created["apiKey"])
        await client.login("ops@field.test", created["adminPassword"])


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("midm-server: error: "), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert needle in result.stderr, result.stderr


async def test_bad_settings_fail_with_one_line(tmp_path: Path) -> None:
    """A folder as --db, a corrupt database, a bad port: one clear line, exit 2."""
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    cases = [
        (["--db", str(tmp_path), "--port", "0"], "is a folder"),
        (["--db", str(corrupt), "--port", "0"], "not a usable SQLite database"),
        (["--db", str(tmp_path / "x.sqlite"), "--port", "70000"], "70000 is not a port"),
    ]
    for args, needle in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_taken_port_fails_before_writing_anything(tmp_path: Path) -> None:
    """On a port in use the server fails with one line and exit 2, and has written nothing:
    no database, no credentials file, not even the database's folder."""
    db = tmp_path / "new" / "db.sqlite"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("--db", str(db), "--port", port)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
    assert list(tmp_path.iterdir()) == []


def test_site_commands_refuse_a_missing_database(tmp_path: Path) -> None:
    """`site list` and `site add` on a missing --db exit 2 with one line naming the path, and
    create nothing (a mistyped path must not become a second, empty database)."""
    missing = tmp_path / "missing.sqlite"
    for args in (["site", "list"], ["site", "add", "field"], ["site", "list", "--json"]):
        result = run_cli(*args, "--db", str(missing))
        assert_one_line_error(result, f"no database at {missing}")
        assert result.stdout == ""
        assert list(tmp_path.iterdir()) == []


def test_other_console_scripts_exist() -> None:
    """midm-agent and midm-sim are installed and print their help."""
    for name in ("midm-agent", "midm-sim"):
        result = subprocess.run(
            [str(BIN / name), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0 and "usage" in result.stdout
