"""Crash safety: SIGKILL the agent process between queueing (committed) and sending, and between
sending and clearing the outbox; after a restart every event reached the server exactly once."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from agent.runtime.outbox import FileOutbox, ItemKind
from tests.helpers import Client, Server

ROOT = Path(__file__).parent.parent.parent


async def agent_process(
    base: str, state: Path, mode: str, count: int, until: str
) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.agent.crash_agent",
        base,
        str(state),
        mode,
        str(count),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        line = (await process.stdout.readline()).decode().strip()
    assert line.startswith(until), line
    return process


@pytest.mark.parametrize("mode", ["queue", "sent"])
async def test_sigkill_loses_nothing_and_duplicates_nothing(
    server: Server, admin: Client, tmp_path: Path, mode: str
) -> None:
    """Killed with SIGKILL at the worst moment, a restarted agent delivers each event once."""
    state = tmp_path / "state"
    victim = await agent_process(server.base, state, mode, 25, mode)
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    assert len(list((state / "outbox").glob("*-batch.jsonl"))) == 1  # one commit, one file
    outbox = FileOutbox(state / "outbox")
    outbox.prepare()
    queued = [item.body["id"] for item in outbox.pending(ItemKind.EVENT)]
    assert len(queued) == 25 and len(set(queued)) == 25
    already = server.sql("SELECT COUNT(*) FROM events")[0][0]
    assert already == (25 if mode == "sent" else 0)
    survivor = await agent_process(server.base, state, "flush", 0, "done 0")
    await survivor.wait()
    rows = server.sql("SELECT id, COUNT(*) AS n FROM events GROUP BY id")
    assert len(rows) == 25 and all(r["n"] == 1 for r in rows)
    assert {r["id"] for r in rows} == set(queued)
