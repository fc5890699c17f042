"""The check-in loop's retries on the agent's own clock (agent.core.backoff through the real
Agent): a cycle that fails after its check-in went through (`reached`) is retried within
seconds, one that cannot reach the server once quickly and then about a check-in interval
later. A FakeClock with autojump over a MockTransport: no real waiting."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import AgentConfig
from agent.errors import TransportError
from agent.protocol import Request, Response
from agent.runtime.agent import Agent
from agent.runtime.memory import MemoryOutbox, MemoryStateStore
from agent.transport.mock import MockPush, MockTransport
from tests.agent.agent_harness import SAFETY_S, sim_platform


def envelope(data: Any = None) -> Response:
    body = {"uq": "u", "result": True, "code": 0, "message": "m", "build": "t", "data": data}
    return Response(status=200, headers={}, body=json.dumps(body).encode())


async def checkin_times(*, failing: str, failures: int, seed: int) -> list[float]:
    """When the agent's check-ins went out, until the one after `failures` failures of the
    request named `failing` (a dropped connection each time) and one more."""
    clock = FakeClock(autojump_threshold=0)
    at: list[float] = []
    left = failures
    done = asyncio.Event()

    async def server(request: Request) -> Response:
        nonlocal left
        if request.name == "register":
            return envelope({"deviceUuid": "d1", "token": "t1"})
        if request.name == "checkin":
            at.append(clock.monotonic())
            if len(at) == failures + 2:
                done.set()
        if request.name == failing and left > 0:
            left -= 1
            raise TransportError(f"{failing}: connection reset")
        if request.name == "checkin":
            reply = {"nextCheckinSeconds": 300, "inventoryWanted": True, "profiles": []}
            return envelope(reply)
        return envelope({})

    agent = Agent(
        config=AgentConfig(server="http://mock", api_key="k", state_dir=Path("unused"), push=False),
        platform=sim_platform(),
        transport=MockTransport(server),
        clock=clock,
        state_store=MemoryStateStore(),
        outbox=MemoryOutbox(),
        rng=random.Random(seed),
    )
    async with asyncio.timeout(SAFETY_S):
        await agent.run(done)
    return at


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_failure_after_the_check_in_went_through_is_retried_within_seconds(
    seed: int,
) -> None:
    """The inventory upload drops three times after check-ins that succeeded: retries after at
    most 1, 2 and 4 s (full jitter, doubling), then the server's 300 s interval."""
    at = await checkin_times(failing="apps", failures=3, seed=seed)
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert len(gaps) == 4 and all(g <= top for g, top in zip(gaps, (1, 2, 4), strict=False))
    assert 270 <= gaps[3] <= 330, gaps


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_server_out_of_reach_is_retried_once_quickly_then_an_interval_later(
    seed: int,
) -> None:
    """Check-ins refused three times from the start: the first retry within 1 s, the next two
    30-90 s later (0.5-1.5 x the configured 60 s interval: no answer gave another), never
    sooner: no herd when the server comes back."""
    at = await checkin_times(failing="checkin", failures=3, seed=seed)
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert gaps[0] <= 1 and all(30 <= g <= 90 for g in gaps[1:3]), gaps
    assert 270 <= gaps[3] <= 330, gaps


async def push_reconnect_gap(*, close_code: int | None, seed: int) -> float:
    """Seconds between the server closing the push channel with `close_code` and the agent
    opening it again (check-ins every 300 s succeed meanwhile)."""
    clock = FakeClock(autojump_threshold=0)
    opened: list[float] = []
    first, reopened = asyncio.Event(), asyncio.Event()
    done = asyncio.Event()

    class CountingTransport(MockTransport):
        @asynccontextmanager
        async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[MockPush]:
            opened.append(clock.monotonic())
            (first if len(opened) == 1 else reopened).set()
            async with super().open_push(path, headers) as channel:
                yield channel

    async def server(request: Request) -> Response:
        if request.name == "register":
            return envelope({"deviceUuid": "d1", "token": "t1"})
        if request.name == "checkin":
            return envelope({"nextCheckinSeconds": 300, "inventoryWanted": False, "profiles": []})
        return envelope({})

    transport = CountingTransport(server, clock=clock)
    agent = Agent(
        config=AgentConfig(server="http://mock", api_key="k", state_dir=Path("unused")),
        platform=sim_platform(),
        transport=transport,
        clock=clock,
        state_store=MemoryStateStore(),
        outbox=MemoryOutbox(),
        rng=random.Random(seed),
    )
    async with asyncio.timeout(SAFETY_S), asyncio.TaskGroup() as group:
        group.create_task(agent.run(done))
        await first.wait()
        closed_at = clock.monotonic()
        transport.push.close(close_code)
        await reopened.wait()
        done.set()
    return opened[1] - closed_at


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_dropped_push_channel_comes_back_at_once(seed: int) -> None:
    """A channel that drops (no close code, or any but 1001) is opened again within 1 s."""
    assert await push_reconnect_gap(close_code=None, seed=seed) <= 1.0


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_server_going_away_is_not_rejoined_by_the_whole_fleet_at_once(seed: int) -> None:
    """Closed with 1001 (the server's shutdown closes every channel at once): no quick retry;
    the channel comes back with the next check-in that succeeds, spread over the interval."""
    assert await push_reconnect_gap(close_code=1001, seed=seed) > 1.0
