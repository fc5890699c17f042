"""The embedded reference server: `midm-server` in its own process for one simulator run.

A fresh database in a temporary folder, a free loopback port (`--port 0`; the URL is read from
the server's `server.listening` line), and the first site seeded with credentials made for this
run (MIDM_API_KEY, MIDM_ADMIN_EMAIL, MIDM_ADMIN_PASSWORD). The server runs in a session of its
own, so a Ctrl-C at the terminal reaches the simulator only: the run still reads the server's
record for its report, then stops it. Leaving the context sends SIGTERM and waits for a clean
exit (SIGKILL only when it ignores SIGTERM for `STOP_TIMEOUT_S`), on success, error and
cancellation alike; the temporary folder goes with it.

`EmbeddedServer.restart()` (the timeline's `restart_server`) stops the process the same way
(SIGTERM, a clean exit) and starts a new one on the same port and the same database (its site
is there already: no seed variables the second time), within STOP_TIMEOUT_S + START_TIMEOUT_S;
the agents meet refused connections meanwhile and recover by themselves. Decisions [ours]: the
port is bound again at once (the server's listening socket has SO_REUSEADDR, so connections
left in TIME_WAIT do not hold it; a port some other process took meanwhile is a RunError);
`cpu_s()` adds up the processes' CPU, each stopped one's as read just before its SIGTERM (the
few milliseconds of its shutdown are not counted).
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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from simulator.errors import RunError

log = structlog.get_logger("simulator.embedded")

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
TAIL_LINES = 8  # of the server's log, quoted when it fails to start
SEED_VARIABLES = ("MIDM_SITE", "MIDM_API_KEY", "MIDM_ADMIN_EMAIL", "MIDM_ADMIN_PASSWORD")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What the simulator needs of a site: the agents' API key and an admin's login."""

    api_key: str
    admin_email: str
    admin_password: str = field(repr=False)


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


def server_command(
    db: Path, *, checkin_interval_s: int | None, log_level: str, port: int = 0
) -> list[str]:
    command = [
        str(BIN / "midm-server"), "--db", str(db), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if checkin_interval_s is not None:
        command += ["--checkin-interval", str(checkin_interval_s)]
    return [*command, "--log-level", log_level]


class _Process:
    """One midm-server process: started, listening, its stderr drained, stopped."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.draining: asyncio.Task[None] | None = None
        self.url = ""

    @classmethod
    async def start(cls, command: list[str], env: Mapping[str, str], timeout_s: float) -> _Process:
        """Start it; return once it listens (RunError with its log's tail when it does not)."""
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,  # the terminal's Ctrl-C is the simulator's to handle
        )
        started = cls(process)
        try:
            started.url = await started._until_listening(timeout_s)
        except BaseException:  # it never listened, or we were cancelled early
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        # the pipe must never fill up; this object owns the task (not a TaskGroup: the run's
        # own exception must come out as it is, not in a group)
        started.draining = asyncio.ensure_future(started._drain())
        return started

    @property
    def pid(self) -> int:
        return self.process.pid

    async def close(self) -> None:
        """Stop it (SIGTERM, bounded) and stop draining; SIGKILL when cancelled early."""
        try:
            await stop(self.process)
        finally:
            if self.draining is not None:
                self.draining.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.draining
            if self.process.returncode is None:  # cancelled before it stopped
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()

    async def _until_listening(self, timeout_s: float) -> str:
        stderr = self.process.stderr
        assert stderr is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await stderr.readline()
                    if not line:
                        raise RunError(
                            "the embedded midm-server exited before listening: "
                            + " | ".join(t.strip() for t in self.tail)
                        )
                    text = line.decode(errors="replace")
                    self.tail.append(text)
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

    async def _drain(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        while line := await stderr.readline():
            self.tail.append(line.decode(errors="replace"))


class EmbeddedServer:
    """The running embedded server: `url`, `credentials`, `db_path`, the current `pid`;
    `restart()` stops it and starts it again on the same port and database."""

    def __init__(
        self,
        process: _Process,
        *,
        credentials: Credentials,
        db_path: Path,
        env: Mapping[str, str],
        checkin_interval_s: int | None,
        start_timeout_s: float,
    ) -> None:
        self._process: _Process | None = process
        self.url = process.url
        self.credentials = credentials
        self.db_path = db_path
        self._env = env
        self._checkin_interval_s = checkin_interval_s
        self._start_timeout_s = start_timeout_s
        self._cpu_before = 0.0  # of the processes stopped by restarts
        self._pid = process.pid
        self.restarts = 0

    @property
    def pid(self) -> int:
        """The current process's id (a restart makes a new one)."""
        return self._pid

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None  # the server's own URL always has one
        return port

    def cpu_s(self) -> float | None:
        """The server's CPU time so far (user + system, every process of the run), where /proc
        tells it."""
        now = process_cpu_s(self._pid) if self._process is not None else 0.0
        return None if now is None else self._cpu_before + now

    async def restart(self, *, down_s: float = 0.0) -> float:
        """Stop the server (SIGTERM, a clean exit), stay down `down_s` real seconds, start it
        again on the same port and database; the real seconds it was down (RunError when it
        does not listen again)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self._stop_current()
        if down_s > 0:
            await asyncio.sleep(down_s)
        env = {k: v for k, v in self._env.items() if k not in SEED_VARIABLES}
        command = server_command(
            self.db_path,
            checkin_interval_s=self._checkin_interval_s,
            log_level="info",
            port=self.port,
        )
        process = await _Process.start(command, env, self._start_timeout_s)
        if process.url != self.url:  # cannot happen with an explicit port; never two URLs
            await process.close()
            raise RunError(f"the embedded midm-server came back on {process.url}, not {self.url}")
        self._process, self._pid = process, process.pid
        self.restarts += 1
        down = loop.time() - began
        log.info("embedded.restarted", url=self.url, pid=process.pid, down_s=round(down, 3))
        return down

    async def _stop_current(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self._cpu_before += process_cpu_s(process.pid) or 0.0
        await process.close()
        if process.process.returncode not in (0, None):
            log.warning("embedded.unclean_exit", returncode=process.process.returncode)

    async def close(self) -> None:
        await self._stop_current()


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
        command = server_command(db, checkin_interval_s=checkin_interval_s, log_level="info")
        server = EmbeddedServer(
            await _Process.start(command, env, start_timeout_s),
            credentials=credentials,
            db_path=db,
            env=env,
            checkin_interval_s=checkin_interval_s,
            start_timeout_s=start_timeout_s,
        )
        try:
            yield server
        finally:
            await server.close()


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
