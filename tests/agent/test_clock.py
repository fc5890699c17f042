"""FakeClock: sleepers wake in deadline order (equal deadlines in arrival order), a cancelled
sleep is forgotten at once, time adds up exactly, and autojump moves time only when every task
waits, as trio's MockClock(autojump_threshold=0) does. No test here waits on the wall clock."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import protocol
from agent.clock import Clock, FakeClock, Flag, ScaledClock, SystemClock
from agent.config import AgentConfig
from agent.protocol import Request, Response
from agent.runtime.agent import Agent
from agent.runtime.memory import MemoryOutbox, MemoryStateStore
from agent.runtime.outbox import FileOutbox
from agent.runtime.state import FileStateStore
from agent.transport.base import Exchange
from agent.transport.mock import Handler, MockTransport
from tests.agent.agent_harness import SAFETY_S, Changes, sim_platform

START_MS = 1_790_000_000_000

Sleeps = list[tuple[str, float]]


async def fall_asleep(
    clock: FakeClock, sleeps: Sleeps, woke: list[str]
) -> dict[str, asyncio.Task[None]]:
    """One task per (name, seconds), each asleep before the next starts (arrival order)."""
    changes = Changes()
    clock.observers.append(changes.notify)

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks: dict[str, asyncio.Task[None]] = {}
    for name, seconds in sleeps:
        tasks[name] = asyncio.create_task(sleeper(name, seconds))
        await changes.until(lambda: clock.sleeping == len(tasks), "the sleeper is asleep")
    clock.observers.remove(changes.notify)
    return tasks


async def finish(tasks: dict[str, asyncio.Task[None]]) -> None:
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


@pytest.mark.parametrize(
    ("sleeps", "steps"),
    [
        pytest.param([("a", 3), ("b", 1), ("c", 2)], [(3, "bca")], id="earliest-first"),
        pytest.param([("a", 1), ("b", 1), ("c", 1)], [(1, "abc")], id="ties-in-arrival-order"),
        pytest.param([("a", 2), ("b", 1), ("c", 2)], [(5, "bac")], id="ties-after-the-earlier"),
        pytest.param([("a", 1), ("b", 5)], [(2, "a"), (2, ""), (1, "b")], id="only-the-due-ones"),
        pytest.param([("a", 1.0)], [(0.1, "")] * 9 + [(0.1, "a")], id="ten-tenths-make-one"),
        pytest.param([("a", 0.1), ("b", 0.3)], [(0.05, ""), (0.05, "a"), (0.2, "b")], id="halves"),
        pytest.param([("a", 0), ("b", -1)], [(0, "")], id="zero-and-negative-do-not-wait"),
    ],
)
async def test_advance_wakes_the_due_sleepers_in_order(
    sleeps: Sleeps, steps: list[tuple[float, str]]
) -> None:
    """Each advance wakes exactly the sleepers now due, earliest deadline first, equal deadlines
    in the order they began; time is kept in whole nanoseconds, so steps add up exactly."""
    clock = FakeClock(START_MS)
    woke: list[str] = []
    waiting = [(name, s) for name, s in sleeps if s > 0]
    tasks = await fall_asleep(clock, waiting, woke)
    instant = [asyncio.create_task(clock.sleep(s)) for _, s in sleeps if s <= 0]
    try:
        async with asyncio.timeout(SAFETY_S):
            await asyncio.gather(*instant)  # no advance needed
            for seconds, expected in steps:
                before = len(woke)
                clock.advance(seconds)
                assert clock.sleeping == len(waiting) - before - len(expected)
                await asyncio.gather(*(tasks[name] for name in expected))
                assert "".join(woke[before:]) == expected
    finally:
        await finish(tasks)
    elapsed = sum(seconds for seconds, _ in steps)
    assert clock.now_ms() == START_MS + round(elapsed * 1000)
    assert clock.monotonic() == pytest.approx(elapsed)


@pytest.mark.parametrize(
    ("sleeps", "cancel", "next_deadline", "woken"),
    [
        pytest.param([("a", 5)], "a", None, "", id="the-only-sleeper"),
        pytest.param([("a", 1), ("b", 2)], "a", 2.0, "b", id="the-earliest"),
        pytest.param([("a", 1), ("b", 2)], "b", 1.0, "a", id="a-later-one"),
        pytest.param([("a", 1), ("b", 1)], "a", 1.0, "b", id="one-of-two-ties"),
    ],
)
async def test_a_cancelled_sleep_is_forgotten(
    sleeps: Sleeps, cancel: str, next_deadline: float | None, woken: str
) -> None:
    """Cancelling a sleeper removes it at once: not counted, not the next deadline, not woken."""
    clock = FakeClock()
    woke: list[str] = []
    tasks = await fall_asleep(clock, sleeps, woke)
    try:
        tasks[cancel].cancel()
        await asyncio.gather(tasks[cancel], return_exceptions=True)
        assert clock.sleeping == len(sleeps) - 1
        assert clock.next_deadline() == next_deadline
        clock.advance(10)
        async with asyncio.timeout(SAFETY_S):
            await asyncio.gather(*(t for name, t in tasks.items() if name != cancel))
        assert "".join(woke) == woken and clock.sleeping == 0
    finally:
        await finish(tasks)


async def test_many_cancelled_sleeps_do_not_pile_up() -> None:
    """A nudged agent cancels a sleep per nudge: the heap keeps only what is still waiting."""
    clock = FakeClock()
    woke: list[str] = []
    tasks = await fall_asleep(clock, [("kept", 100)], woke)
    for _ in range(1000):
        task = asyncio.create_task(clock.sleep(150))  # below the kept one in the heap
        await asyncio.sleep(0)  # let it fall asleep
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(clock._heap) < 50  # compacted as it went
    assert clock.sleeping == 1 and clock.next_deadline() == 100
    await finish(tasks)


async def test_an_endless_sleep_is_counted_but_never_due() -> None:
    clock = FakeClock(autojump_threshold=0)
    woke: list[str] = []
    tasks = await fall_asleep(clock, [("forever", float("inf"))], woke)
    assert clock.sleeping == 1 and clock.next_deadline() == float("inf")
    async with asyncio.timeout(SAFETY_S):
        await clock.sleep(5)  # autojump still serves the finite sleep
    assert clock.monotonic() == 5 and woke == []
    await finish(tasks)
    assert clock.sleeping == 0


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_time_does_not_go_back(bad: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="cannot advance"):
        clock.advance(bad)
    with pytest.raises(ValueError, match="autojump_threshold"):
        FakeClock(autojump_threshold=bad)


# -- autojump --------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, 0.001])
async def test_autojump_ends_a_sleep_at_once_in_clock_time(threshold: float) -> None:
    """With nothing else to do, an hour's sleep returns, the clock an hour later."""
    clock = FakeClock(START_MS, autojump_threshold=threshold)
    async with asyncio.timeout(SAFETY_S):
        await clock.sleep(3600)
    assert clock.monotonic() == 3600 and clock.now_ms() == START_MS + 3_600_000


@pytest.mark.parametrize(
    ("plans", "expected"),
    [
        pytest.param(
            {"a": [3], "b": [1], "c": [2], "d": [1]},
            [("b", 1), ("d", 1), ("c", 2), ("a", 3)],
            id="one-jump-per-deadline",
        ),
        pytest.param(
            {"a": [1, 1.5], "b": [2], "c": [0.25] * 8},
            [("b", 2), ("c", 2), ("a", 2.5)],  # c's last sleep began after b's
            id="sleeping-again-after-waking",
        ),
    ],
)
async def test_autojump_wakes_each_sleeper_at_its_deadline(
    plans: dict[str, list[float]], expected: list[tuple[str, float]]
) -> None:
    """Time jumps from deadline to deadline; every sleeper sees its own deadline as now."""
    clock = FakeClock(autojump_threshold=0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, plan: list[float]) -> None:
        for seconds in plan:
            await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async with asyncio.timeout(SAFETY_S), asyncio.TaskGroup() as group:
        for name, plan in plans.items():
            group.create_task(sleeper(name, plan))
    assert woke == expected


async def test_autojump_waits_while_other_work_is_ready() -> None:
    """A task with work to do (here a long chain of ready steps and futures) holds time still;
    the clock jumps only once it, too, waits."""
    clock = FakeClock(autojump_threshold=0)
    busy_until: list[float] = []

    async def busy() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(500):
            await asyncio.sleep(0)
            future: asyncio.Future[None] = loop.create_future()
            loop.call_soon(future.set_result, None)
            await future
        busy_until.append(clock.monotonic())

    async def sleeper() -> float:
        await clock.sleep(5)
        return clock.monotonic()

    async with asyncio.timeout(SAFETY_S):
        woke_at, _ = await asyncio.gather(sleeper(), busy())
    assert busy_until == [0.0] and woke_at == 5


async def test_turning_autojump_on_moves_a_waiting_clock_and_advance_still_works() -> None:
    clock = FakeClock()
    woke: list[str] = []
    tasks = await fall_asleep(clock, [("a", 10), ("b", 20)], woke)
    clock.advance(10)  # by hand
    async with asyncio.timeout(SAFETY_S):
        await tasks["a"]
        assert clock.monotonic() == 10 and clock.autojump_threshold is None
        clock.autojump_threshold = 0  # the rest by itself
        await tasks["b"]
    assert woke == ["a", "b"] and clock.monotonic() == 20


# -- autojump drives the real agent ----------------------------------------------------------


def envelope(status: int, code: int, data: Any = None, **headers: str) -> Response:
    body = {"uq": "u", "result": status < 400, "code": code, "message": "m", "build": "t"}
    return Response(
        status=status, headers=headers, body=json.dumps({**body, "data": data}).encode()
    )


async def test_autojump_runs_the_agent_loop_through_backoff_and_intervals(tmp_path: Path) -> None:
    """The real check-in loop over a MockTransport: three 503s with Retry-After 7: the first
    retried after 7-7.7 s (its quick retry raised to the Retry-After floor), the next two after
    half to one and a half check-in intervals (60 s before the server gave one: never sooner
    than a check-in would come, agent.core.backoff); then check-ins follow the 300 s interval
    (+-10%), with no real waiting."""
    clock = FakeClock(autojump_threshold=0)
    at: list[float] = []
    fifth = asyncio.Event()

    async def server(request: Request) -> Response:
        if request.name == "register":
            return envelope(200, 0, {"deviceUuid": "d1", "token": "t1"})
        if request.name == "checkin":
            at.append(clock.monotonic())
            if len(at) == 5:
                fifth.set()
            if len(at) <= 3:
                return envelope(503, 50300, **{"Retry-After": "7"})
            return envelope(200, 0, {"nextCheckinSeconds": 300, "profiles": []})
        return envelope(200, 0)

    config = AgentConfig(
        server="http://mock", api_key="k", state_dir=tmp_path, platform="simulated"
    )
    agent = Agent(
        config=config,
        platform=sim_platform(),
        transport=MockTransport(server),
        clock=clock,
        state_store=FileStateStore(tmp_path),
        outbox=FileOutbox(tmp_path / "outbox"),
        rng=random.Random(7),
    )
    stop = asyncio.Event()
    async with asyncio.timeout(SAFETY_S), asyncio.TaskGroup() as group:
        group.create_task(agent.run(stop))
        await fifth.wait()
        stop.set()
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert at[0] == 0 and 7 <= gaps[0] <= 7.7 and all(30 <= g <= 90 for g in gaps[1:3]), gaps
    assert 270 <= gaps[3] <= 330, gaps
    assert agent.statistics().failures == 3 and agent.statistics().checkins >= 2


# -- wait_for: one wait per sleep, no task -------------------------------------------------


async def test_wait_for_returns_when_the_event_comes_or_the_time_is_up() -> None:
    """On a FakeClock, wait_for ends with True when the event is set before the deadline (and at
    once if it was set already), with False when time reaches the deadline; while it waits it
    is a sleeper like any other, and it leaves the heap as soon as it ends."""
    clock = FakeClock()
    event = asyncio.Event()
    changes = Changes()
    clock.observers.append(changes.notify)
    async with asyncio.timeout(SAFETY_S):
        timed_out = asyncio.create_task(clock.wait_for(event, 5))
        await changes.until(lambda: clock.sleeping == 1, "waiting")
        assert clock.next_deadline() == 5
        clock.advance(4.9)
        await asyncio.sleep(0)
        assert not timed_out.done()
        clock.advance(0.1)
        assert await timed_out is False and clock.sleeping == 0

        woken = asyncio.create_task(clock.wait_for(event, 5))
        await changes.until(lambda: clock.sleeping == 1, "waiting again")
        event.set()
        assert await woken is True
        assert clock.sleeping == 0 and clock.next_deadline() is None  # forgotten at once
        assert await clock.wait_for(event, 5) is True  # already set: no wait
        event.clear()
        assert await clock.wait_for(event, 0) is False


async def test_wait_for_makes_no_task() -> None:
    """A wait is one future in the clock's heap and a timeout scope: no task is created, so
    1,000 parked agents do not hold 2,000 extra tasks."""
    clock = FakeClock()
    events = [asyncio.Event() for _ in range(100)]
    before = len(asyncio.all_tasks())
    waiters = asyncio.gather(*(clock.wait_for(e, 10) for e in events))
    changes = Changes()
    clock.observers.append(changes.notify)
    async with asyncio.timeout(SAFETY_S):
        await changes.until(lambda: clock.sleeping == 100, "all waiting")
        assert len(asyncio.all_tasks()) == before + 100  # gather's own: one per coroutine
        for event in events[:50]:
            event.set()
        clock.advance(10)
        assert await waiters == [True] * 50 + [False] * 50


@pytest.mark.parametrize("make", [SystemClock, lambda: ScaledClock(1e6)], ids=["system", "scaled"])
async def test_real_clocks_wait_for_an_event_or_their_time(make: Callable[[], Clock]) -> None:
    """SystemClock and ScaledClock bound the wait with the loop's timer (scaled: a second of
    clock time is a microsecond here)."""
    clock = make()
    event = asyncio.Event()
    async with asyncio.timeout(SAFETY_S):
        asyncio.get_running_loop().call_soon(event.set)
        assert await clock.wait_for(event, 3600 * 1e6 if isinstance(clock, ScaledClock) else 3600)
        assert await clock.wait_for(event, 5)  # already set
        event.clear()
        if isinstance(clock, ScaledClock):
            assert await clock.wait_for(event, 1.0) is False
        assert await clock.wait_for(event, 0) is False


async def test_scaled_clock_waits_on_flags_share_one_timer() -> None:
    """Waits on Flags sit in the clock's one timer heap: a flag set first ends its wait True, the
    others end False in deadline order, a cancelled wait is skipped, and the heap is empty
    after (the loop holds one timer for them all, none once they are done)."""
    clock = ScaledClock(1e6)  # a second of clock time is a microsecond
    flags = [Flag() for _ in range(5)]
    ended: list[int] = []

    async def wait(i: int, seconds: float) -> bool:
        result = await clock.wait_for(flags[i], seconds)
        ended.append(i)
        return result

    async with asyncio.timeout(SAFETY_S):
        tasks = [asyncio.create_task(wait(i, s)) for i, s in enumerate([3e3, 1e3, 4e3, 2e3, 5e3])]
        await asyncio.sleep(0)  # every wait is in the heap
        waits = clock._waits
        assert waits is not None and len(waits._heap) == 5
        flags[2].set()
        tasks[4].cancel()
        results = await asyncio.gather(*tasks[:4])
    assert results == [False, False, True, False]
    assert ended == [2, 1, 3, 0]  # the flag first, then the deadlines in order
    assert all(entry[2].done() for entry in waits._heap)  # the set and the cancelled: skipped
    assert await clock.wait_for(Flag(), 6e3) is False  # past every deadline: they are dropped
    assert waits._heap == [] and waits._handle is None


async def test_scaled_clock_waits_the_plain_way_on_events_and_other_loops() -> None:
    """An asyncio.Event (not a Flag), or a clock whose heap is bound to a loop still running in
    another thread, waits with asyncio.timeout and no heap entry here; once that loop is
    closed, the heap is made again on the loop that waits."""
    clock = ScaledClock(1e6)
    event = asyncio.Event()
    assert await clock.wait_for(event, 1.0) is False
    assert clock._waits is None
    bound, release = threading.Event(), threading.Event()

    async def hold_a_loop() -> None:
        assert await clock.wait_for(Flag(), 1.0) is False  # binds the heap to this loop
        bound.set()
        await asyncio.to_thread(release.wait)

    other = asyncio.create_task(asyncio.to_thread(asyncio.run, hold_a_loop()))
    assert await asyncio.to_thread(bound.wait, 60)
    theirs = clock._waits
    assert theirs is not None and theirs.loop is not asyncio.get_running_loop()
    assert await clock.wait_for(Flag(), 1.0) is False  # the plain way: their heap untouched
    assert clock._waits is theirs and theirs._heap == []
    release.set()
    await other  # their loop is closed now
    assert await clock.wait_for(Flag(), 1.0) is False
    assert clock._waits is not theirs and clock._waits.loop is asyncio.get_running_loop()
    assert clock._waits._heap == []


def script() -> tuple[Handler, list[tuple[str, str, str, str]], asyncio.Event]:
    """A canned server: one settings profile, a 503 on the second check-in (backoff jitter),
    the stop signal after the sixth. Records every request as (method, path, params, body)."""
    seen: list[tuple[str, str, str, str]] = []
    done = asyncio.Event()
    checkins = 0

    async def handler(request: Request) -> Response:
        nonlocal checkins
        seen.append(
            (
                request.method,
                request.path,
                json.dumps(dict(request.params), sort_keys=True),
                json.dumps(request.body, sort_keys=True),
            )
        )
        if request.name == "register":
            return envelope(200, 0, {"deviceUuid": "d1", "token": "t1"})
        if request.name == "checkin":
            checkins += 1
            if checkins == 6:
                done.set()
            if checkins == 2:
                return envelope(503, 50300)
            reply = {"nextCheckinSeconds": 300, "profiles": [{"uuid": "p1", "updated": 1}]}
            return envelope(200, 0, reply)
        if request.name == "profiles":
            doc = {"uuid": "p1", "updated": 1, "settings": {"wifi": {"ssid": "lab"}}}
            return envelope(200, 0, [doc])
        return envelope(200, 0)

    return handler, seen, done


async def replay(seed: int, tmp_path: Path) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """A simulated agent (memory persistence) run on a FakeClock with autojump until its sixth
    check-in: every request it made, and the ids of the events it sent."""
    handler, seen, done = script()
    agent = Agent(
        config=AgentConfig(
            server="http://mock", api_key="k", state_dir=tmp_path, platform="simulated", push=False
        ),
        platform=sim_platform(),
        transport=MockTransport(handler),
        clock=FakeClock(autojump_threshold=0),
        state_store=MemoryStateStore(),
        outbox=MemoryOutbox(),
        rng=random.Random(seed),
    )
    async with asyncio.timeout(SAFETY_S):
        await agent.run(done)
    ids = [
        event["id"]
        for _, path, _, body in seen
        if path == protocol.EVENTS
        for event in json.loads(body)
    ]
    return seen, ids


async def test_a_seeded_run_replays(tmp_path: Path) -> None:
    """Two agents with the same seed, on a FakeClock with autojump and a MockTransport, make
    the identical sequence of requests (bodies, times and event ids included); another seed
    draws other event ids and other jitter."""
    first, first_ids = await replay(42, tmp_path)
    second, second_ids = await replay(42, tmp_path)
    assert first_ids and first == second and first_ids == second_ids
    other, other_ids = await replay(43, tmp_path)
    assert len(other_ids) == len(first_ids) and not set(other_ids) & set(first_ids)
    assert other != first


async def test_a_parked_agent_holds_only_its_loops(tmp_path: Path) -> None:
    """Between check-ins a fleet's agent (stopped by request_stop()) is its run() task alone,
    the check-in loop waiting in one clock wait: no sleeper task, no event-waiter task, no
    stop-watcher task, no task for the loop itself."""
    handler, _, _ = script()
    clock = FakeClock()
    changes = Changes()
    clock.observers.append(changes.notify)
    agent = Agent(
        config=AgentConfig(
            server="http://mock", api_key="k", state_dir=tmp_path, platform="simulated", push=False
        ),
        platform=sim_platform(),
        transport=MockTransport(handler),
        clock=clock,
        state_store=MemoryStateStore(),
        outbox=MemoryOutbox(),
        rng=random.Random(1),
    )
    before = asyncio.all_tasks()
    async with asyncio.timeout(SAFETY_S), asyncio.TaskGroup() as group:
        group.create_task(agent.run(), name="agent")
        await changes.until(
            lambda: agent.statistics().checkins == 1 and clock.sleeping == 1, "parked"
        )
        assert sorted(t.get_name() for t in asyncio.all_tasks() - before) == ["agent"]
        agent.request_stop()


async def test_a_flag_behaves_as_an_event_and_forgets_abandoned_waits() -> None:
    """Flag: set wakes every waiter, a wait on a set flag is done at once, clear re-arms it;
    waits that time out (an agent's idle check-ins) do not pile up in it."""
    flag = Flag()
    clock = FakeClock()
    waiters = [flag.wait() for _ in range(3)]
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.gather(*waiters)
    assert flag.is_set() and flag.wait().done()
    flag.clear()
    assert not flag.is_set()
    async with asyncio.timeout(SAFETY_S):
        for _ in range(1000):
            task = asyncio.create_task(clock.wait_for(flag, 300))
            await asyncio.sleep(0)
            clock.advance(300)
            assert await task is False
    assert len(flag._waiters or ()) <= 1


async def test_check_ins_are_timed_from_their_intended_send_time(tmp_path: Path) -> None:
    """The observer hears each scheduled check-in with `intended` = the deadline the agent slept
    to (the first one, not scheduled, has none); a platform that holds the agent up before the
    request shows as lateness (started - intended), not as time that vanished."""
    handler, _, done = script()
    clock = FakeClock(autojump_threshold=0)
    heard: list[Exchange] = []
    platform = sim_platform()

    async def slow_hardware_read() -> None:
        await clock.sleep(2.0)  # a slow fact read on the device, before the check-in goes out

    original_power = platform.power

    async def power() -> Any:
        await slow_hardware_read()
        return await original_power()

    platform.power = power  # type: ignore[method-assign]
    agent = Agent(
        config=AgentConfig(
            server="http://mock", api_key="k", state_dir=tmp_path, platform="simulated", push=False
        ),
        platform=platform,
        transport=MockTransport(handler, clock=clock, observer=heard.append),
        clock=clock,
        state_store=MemoryStateStore(),
        outbox=MemoryOutbox(),
        rng=random.Random(3),
    )
    async with asyncio.timeout(SAFETY_S), asyncio.TaskGroup() as group:
        group.create_task(agent.run(done))
    checkins = [e for e in heard if e.name == "checkin"]
    assert len(checkins) == 6 and checkins[0].intended == checkins[0].started
    for exchange in checkins[1:]:
        assert exchange.intended < exchange.started
        assert exchange.lateness == pytest.approx(2.0, abs=1e-6)  # the slow read, no more
