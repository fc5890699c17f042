"""The embedded reference server: `midm-server` in its own process for one simulator run.

A fresh database in a temporary folder, a free loopback port (`--port 0`; the URL is read from
the server's `server.listening` line), and the first site seeded with credentials made for this
run (MIDM_API_KEY, MIDM_ADMIN_EMAIL, MIDM_ADMIN_PASSWORD). The server runs in a session of its
own, so a Ctrl-C at the terminal reaches the simulator only: the run still reads the server's
record for its report, then stops it. Leaving the context sends SIGTERM and waits for a clean
exit (SIGKILL only when it ignores SIGTERM for `STOP_TIMEOUT_S`), on success, error and
cancellation alike; the temporary folder goes with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from simulator.errors import RunError

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
TAIL_LINES = 8  # of the server's log, quoted when it fails to start


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What the simulator needs of a site: the agents' API key and an admin's login."""

    api_key: str
    admin_email: str
    admin_password: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddedServer:
    url: str
    credentials: Credentials
    pid: int
    db_path: Path

    def cpu_s(self) -> float | None:
        """The server process's CPU time so far (user + system), where /proc tells it."""
        return process_cpu_s(self.pid)


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process `pid` from /proc (None where there is none)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": state is fields[0]
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
    except (IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def new_credentials() -> Credentials:
    return Credentials(
        api_key="sim-" + secrets.token_hex(16),
        admin_email="sim-admin@midm-sim.invalid",
        admin_password=secrets.token_urlsafe(18),
    )


def server_command(db: Path, *, checkin_interval_s: int | None, log_level: str) -> list[str]:
    command = [str(BIN / "midm-server"), "--db", str(db), "--host", "127.0.0.1", "--port", "0"]
    if checkin_interval_s is not None:
        command += ["--checkin-interval", str(checkin_interval_s)]
    return [*command, "--log-level", log_level]


@contextlib.asynccontextmanager
async def embedded_server(
    *, checkin_interval_s: int | None = None, start_timeout_s: float = START_TIMEOUT_S
) -> AsyncIterator[EmbeddedServer]:
    """Start `midm-server` on a fresh database; yield it once it listens; stop it at the end.

    Raises RunError (with the last lines of its log) when it exits or stays silent before
    listening."""
    credentials = new_credentials()
    with tempfile.TemporaryDirectory(prefix="midm-sim-server-") as folder:
        db = Path(folder) / "server.sqlite"
        env = {
            **os.environ,
            "MIDM_SITE": "midm-sim",
            "MIDM_API_KEY": credentials.api_key,
            "MIDM_ADMIN_EMAIL": credentials.admin_email,
            "MIDM_ADMIN_PASSWORD": credentials.admin_password,
        }
        process = await asyncio.create_subprocess_exec(
            *server_command(db, checkin_interval_s=checkin_interval_s, log_level="info"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # the terminal's Ctrl-C is the simulator's to handle
        )
        assert process.stderr is not None
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        draining: asyncio.Task[None] | None = None
        try:
            url = await _until_listening(process.stderr, tail, start_timeout_s)
            # the pipe must never fill up; this context owns the task (not a TaskGroup: the
            # body's own exception must come out as it is, not in a group)
            draining = asyncio.ensure_future(_drain(process.stderr, tail))
            try:
                yield EmbeddedServer(url=url, credentials=credentials, pid=process.pid, db_path=db)
            finally:
                await stop(process)
        finally:
            if draining is not None:
                draining.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await draining
            if process.returncode is None:  # it never listened, or we were cancelled early
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then a bounded wait; SIGKILL if the server ignores it. Shielded: a second
    cancellation (another Ctrl-C) cannot leave the server running."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    waiting = asyncio.ensure_future(_wait_or_kill(process))
    try:
        await asyncio.shield(waiting)
    except asyncio.CancelledError:
        await waiting
        raise


async def _wait_or_kill(process: asyncio.subprocess.Process) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _until_listening(
    stderr: asyncio.StreamReader, tail: collections.deque[str], timeout_s: float
) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                line = await stderr.readline()
                if not line:
                    raise RunError(
                        "the embedded midm-server exited before listening: "
                        + " | ".join(t.strip() for t in tail)
                    )
                text = line.decode(errors="replace")
                tail.append(text)
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "server.listening":
                    return str(event["url"])
    except TimeoutError:
        raise RunError(
            f"the embedded midm-server did not listen within {timeout_s:.0f} s"
        ) from None


async def _drain(stderr: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    while line := await stderr.readline():
        tail.append(line.decode(errors="replace"))
