"""Shared bench helpers: start `midm-server` in its own process, time bounded request loops.

Every loop is bounded by a request count and a time limit and stops by itself; only loopback
addresses are used.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BIN = Path(sys.executable).parent
API_KEY = "bench-key"
EMAIL = "bench@bench.test"
PASSWORD = "bench-password"  # noqa: S105 - seed password of a throwaway server


@dataclass
class Timing:
    name: str
    latencies_ms: list[float]
    wall_s: float
    errors: int

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        count = len(ordered)

        def pct(p: float) -> float:
            return round(ordered[min(count - 1, int(p * count))], 3) if count else 0.0

        return {
            "requests": count,
            "errors": self.errors,
            "rps": round(count / self.wall_s, 1) if self.wall_s else 0.0,
            "p50_ms": round(statistics.median(ordered), 3) if count else 0.0,
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
        }


STOP_TIMEOUT_S = 30  # from SIGTERM to exit; SIGKILL after that


@asynccontextmanager
async def server_process(db: Path) -> AsyncIterator[str]:
    """`midm-server --port 0` on `db`, in a separate process; yields its base URL once it logs
    `server.listening` (signals are handled from then on). At the end: SIGTERM, a bounded wait
    for the exit, SIGKILL only if that runs out."""
    env = {
        **os.environ,
        "MIDM_API_KEY": API_KEY,
        "MIDM_ADMIN_EMAIL": EMAIL,
        "MIDM_ADMIN_PASSWORD": PASSWORD,
    }
    process = await asyncio.create_subprocess_exec(
        str(BIN / "midm-server"),
        "--db",
        str(db),
        "--port",
        "0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    stderr = process.stderr
    try:
        url = await _until_listening(stderr)
        async with asyncio.TaskGroup() as group:
            group.create_task(stderr.read())  # keep the pipe from filling up
            try:
                yield url
            finally:
                process.send_signal(signal.SIGTERM)
                await _wait_exit(process)
    finally:
        if process.returncode is None:  # it never listened, or the body failed before SIGTERM
            process.kill()
            await process.wait()


async def _until_listening(stderr: asyncio.StreamReader) -> str:
    seen: list[str] = []
    async with asyncio.timeout(60):
        while True:
            line = await stderr.readline()
            if not line:
                raise RuntimeError("midm-server exited before listening: " + "".join(seen[-5:]))
            seen.append(line.decode(errors="replace"))
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "server.listening":
                return str(event["url"])


async def _wait_exit(process: asyncio.subprocess.Process) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"midm-server ignored SIGTERM for {STOP_TIMEOUT_S} s; killed") from None


async def login(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    async with http.post(
        f"{base}/portal/V1/auth", json={"email": EMAIL, "password": PASSWORD}
    ) as r:
        token = (await r.json())["data"]["access_token"]
    return {"X-API-Key": API_KEY, "Authorization": f"Bearer {token}"}


async def timed_loop(
    name: str,
    request: Callable[[int], Awaitable[bool]],
    *,
    count: int,
    concurrency: int,
    time_limit_s: float,
) -> Timing:
    """Run `request(i)` for i < count with `concurrency` workers, stopping at the time limit."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + time_limit_s

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < count and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            ok = await request(index)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += 0 if ok else 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return Timing(name, latencies, time.perf_counter() - started, errors)


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
