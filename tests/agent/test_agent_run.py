"""Agent.run() without a TaskGroup: the check-in loop in the caller's task, the push listener in
one task of its own, stopped by request_stop() (a fleet) or a stop event (a rig); errors and
cancellation as a TaskGroup gave them; and the agent's per-instance footprint."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import AgentConfig
from agent.errors import StateError
from agent.protocol import Request, Response
from agent.runtime.agent import Agent
from agent.runtime.memory import MemoryOutbox, MemoryStateStore
from agent.transport.mock import MockPush, MockTransport
from tests.agent.agent_harness import SAFETY_S, Changes, sim_platform


def envelope(data: Any = None) -> Response:
    body = {"uq": "u", "result": True, "code": 0, "message": "m", "build": "t", "data": data}
    return Response(status=200, body=json.dumps(body).encode())


async def handler(request: Request) -> Response:
    if request.name == "register":
        return envelope({"deviceUuid": "d1", "token": "t1"})
    if request.name == "checkin":
        return envelope({"nextCheckinSeconds": 300, "profiles": []})
    return envelope()


class BrokenPush(MockTransport):
    """A transport whose push channel fails with an error the push listener does not handle
    (as a state dir that became unwritable would)."""

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[MockPush]:
        raise StateError("cannot write state.json: disk gone")
        yield MockPush()  # pragma: no cover - never reached


def make_agent(tmp_path: Path, clock: FakeClock, *, push: bool, transport: Any = None) -> Agent:
    return Agent(
        config=AgentConfig(
            server="http://mock", api_key="k", state_dir=tmp_path, platform="simulated", push=push
        ),
        platform=sim_platform(),
        transport=transport or MockTransport(handler),
        clock=clock,
        state_store=MemoryStateStore(),
        outbox=MemoryOutbox(),
        rng=random.Random(1),
    )


def watched_clock() -> tuple[FakeClock, Changes]:
    """A fake clock whose every change wakes the waits of the `Changes` beside it."""
    clock, changes = FakeClock(), Changes()
    clock.observers.append(changes.notify)
    return clock, changes


async def first_checkin(agent: Agent, changes: Changes) -> None:
    """Until the agent's first check-in was answered."""
    await changes.until(lambda: agent.statistics().checkins == 1, "first check-in")


def test_an_agent_keeps_fewer_than_30_attributes(tmp_path: Path) -> None:
    """CPython keeps an instance's attributes in a compact values array shared-key style only up
    to 30 attribute names; the 30th costs a whole dict (measured: +1.3 KB per object, i.e. per
    simulated device). Group new state in a slotted object instead (see Agent._running)."""
    agent = make_agent(tmp_path, FakeClock(), push=False)
    assert len(vars(agent)) < 30, sorted(vars(agent))


async def test_request_stop_ends_run_with_a_flush_and_no_task_left(tmp_path: Path) -> None:
    clock, changes = watched_clock()
    agent = make_agent(tmp_path, clock, push=True)
    before = asyncio.all_tasks()
    async with asyncio.timeout(SAFETY_S):
        task = asyncio.create_task(agent.run(), name="agent")
        await first_checkin(agent, changes)
        assert {t.get_name() for t in asyncio.all_tasks() - before} == {"agent", "push-loop"}
        agent.request_stop()
        await task
    assert asyncio.all_tasks() - before == set()
    assert agent.state.enrolled


async def test_a_stop_requested_before_run_only_commits(tmp_path: Path) -> None:
    transport = MockTransport(handler)
    agent = make_agent(tmp_path, FakeClock(), push=False, transport=transport)
    agent.request_stop()
    async with asyncio.timeout(SAFETY_S):
        await agent.run()
    assert transport.sent == []


async def test_a_stop_event_still_stops_a_rig(tmp_path: Path) -> None:
    clock, changes = watched_clock()
    agent = make_agent(tmp_path, clock, push=False)
    stop = asyncio.Event()
    async with asyncio.timeout(SAFETY_S):
        task = asyncio.create_task(agent.run(stop))
        await first_checkin(agent, changes)
        stop.set()
        await task


async def test_an_error_that_ends_the_push_listener_ends_run_with_it(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, FakeClock(), push=True, transport=BrokenPush(handler))
    before = asyncio.all_tasks()
    async with asyncio.timeout(SAFETY_S):
        with pytest.raises(StateError, match="disk gone"):
            await agent.run()
    assert asyncio.all_tasks() - before == set()


async def test_cancelled_from_outside_run_is_cancelled_and_leaves_no_task(tmp_path: Path) -> None:
    """Not a stop: the cancellation goes through (no flush), the push listener is ended too."""
    clock, changes = watched_clock()
    transport = MockTransport(handler)
    agent = make_agent(tmp_path, clock, push=True, transport=transport)
    before = asyncio.all_tasks()
    async with asyncio.timeout(SAFETY_S):
        task = asyncio.create_task(agent.run())
        await first_checkin(agent, changes)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert asyncio.all_tasks() - before == set()
