"""The agent against a real midm-server on 127.0.0.1: enrollment without a second save,
restarts, revoked tokens, the push channel, and a server that is down or misbehaves.

No test waits on the wall clock: the agent's clock is a FakeClock that only the test moves, and
the test waits for requests, push messages, platform changes and sleeps (`Changes.until`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from agent.clock import FakeClock
from agent.errors import ApiError, ProtocolError, TransportError
from server.clock import FixedClock
from tests.agent.agent_harness import SAFETY_S, make_agent, running
from tests.helpers import Client, Server


async def device(admin: Client, serial: str = "S1") -> dict[str, object]:
    reply = await admin.get("/ota/api/device/findBy", serialNo=serial)
    assert reply.status == 200, reply.body
    data: dict[str, object] = reply.data
    return data


async def test_enroll_checkin_restart_never_saves_twice(
    server: Server, admin: Client, clock: FixedClock, tmp_path: Path
) -> None:
    """First run saves and registers; a restarted agent keeps its token and saves nothing."""
    agent, transport = make_agent(server.base, tmp_path / "state")
    await agent.run_once()
    assert transport.names == ["login", "exists", "save", "register", "checkin", "apps"]
    first = await device(admin)
    assert first["enrolled"] is not None
    clock.advance(120)
    await transport.close()
    again, transport2 = make_agent(server.base, tmp_path / "state")
    await again.run_once()
    assert transport2.names == ["checkin"]
    second = await device(admin)
    assert second["enrolled"] == first["enrolled"] and second["created"] == first["created"]
    await transport2.close()


async def test_lost_register_answer_does_not_save_again(
    server: Server, admin: Client, clock: FixedClock, tmp_path: Path
) -> None:
    """A crash after save (no token kept) registers again without a save: status is not reset
    (the device key made at the first run is proved with a challenge, §7)."""
    agent, transport = make_agent(server.base, tmp_path / "state")
    await agent.run_once()
    enrolled = (await device(admin))["enrolled"]
    state_file = tmp_path / "state" / "state.json"
    state = json.loads(state_file.read_text())
    state["token"] = ""
    state_file.write_text(json.dumps(state))
    clock.advance(300)
    again, transport2 = make_agent(server.base, tmp_path / "state")
    await again.run_once()
    assert (
        transport2.names[:4] == ["login", "exists", "challenge", "register"]
        and "save" not in transport2.names
    )
    assert (await device(admin))["enrolled"] == enrolled
    await transport.close()
    await transport2.close()


async def test_revoked_token_leads_to_register_not_save(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """After an admin re-save revokes the token, the agent registers again and never saves."""
    agent, transport = make_agent(server.base, tmp_path / "state")
    await agent.run_once()
    await admin.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "S1"}}}])
    transport.names.clear()
    await agent.run_once()
    assert transport.names[:6] == ["checkin", "login", "exists", "challenge", "register", "checkin"]
    assert "save" not in transport.names and agent.state.registrations == 2
    assert (await device(admin))["enrolled"] is not None
    await transport.close()


async def test_agent_without_admin_credentials(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """Without admin credentials a saved device registers; an unknown one fails clearly."""
    await admin.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "S1"}}}])
    agent, transport = make_agent(server.base, tmp_path / "a", admin=False)
    await agent.run_once()
    assert transport.names == ["register", "checkin", "apps"]
    stranger, transport2 = make_agent(server.base, tmp_path / "b", serial="S2", admin=False)
    with pytest.raises(ApiError, match="not saved on the server"):
        await stranger.run_once()
    await transport.close()
    await transport2.close()


async def test_events_and_inventory_reach_the_server(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """Queued events are sent once and removed; the inventory is reported when asked."""
    agent, transport = make_agent(server.base, tmp_path / "state")
    from agent.platforms.base import AppRecord

    assert isinstance(agent.platform, object)
    agent.platform.apps = {"com.x": AppRecord(package_name="com.x", version_code=3)}  # type: ignore[attr-defined]
    ids = [
        agent.queue_event({"kind": "settings", "status": "applied", "target": f"t{i}"})
        for i in range(3)
    ]
    await agent.run_once()
    await agent.run_once()  # nothing left to resend
    assert agent.outbox.count() == 0
    rows = server.sql("SELECT id FROM events ORDER BY at, rowid")
    assert sorted(r[0] for r in rows) == sorted(ids)
    installed = (await admin.get("/ota/api/device/app/installed", serialNo="S1")).data
    assert [a["packageName"] for a in installed["apps"]] == ["com.x"]
    await transport.close()


async def test_sync_on_the_push_channel_triggers_a_checkin(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """With a long interval, a profile save (sync) makes the agent check in at once."""
    clock = FakeClock()  # never moved: only the push channel can start a second check-in
    agent, transport = make_agent(server.base, tmp_path / "state", clock=clock)
    async with running(agent):
        await transport.changes.until(
            lambda: (
                agent.statistics().checkins >= 1 and agent.push_connected and clock.sleeping == 1
            ),
            "enrolled, checked in once, connected and asleep",
        )
        assert agent.statistics().checkins == 1
        assert (await device(admin))["states"]["rtcEnabled"] is True  # type: ignore[index]
        await admin.post("/ota/api/profile/save", {"scope": {"device": ["S1"]}})
        await transport.changes.until(
            lambda: agent.statistics().checkins >= 2, "a second check-in after the sync"
        )
        assert agent.statistics().checkins == 2
        assert len(agent.state.profiles) == 1


async def test_a_spread_sync_checks_in_within_the_spread_not_at_once(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """With sync_spread_s, a sync brings the next check-in forward to a random time within the
    spread (not to now, not past the interval); the check-in goes when that time comes."""
    clock = FakeClock()
    agent, transport = make_agent(server.base, tmp_path / "state", clock=clock, sync_spread_s=30)
    async with running(agent):
        await transport.changes.until(
            lambda: (
                agent.statistics().checkins >= 1 and agent.push_connected and clock.sleeping == 1
            ),
            "enrolled, checked in once, connected and asleep",
        )
        interval = clock.next_deadline()
        assert interval is not None and interval > 30
        await admin.post("/ota/api/profile/save", {"scope": {"device": ["S1"]}})
        await transport.changes.until(
            lambda: (clock.next_deadline() or interval) < interval, "the sync moved the deadline"
        )
        spread = clock.next_deadline()
        assert spread is not None and 0 <= spread <= 30
        assert agent.statistics().checkins == 1  # not at once
        clock.advance(spread)
        await transport.changes.until(
            lambda: agent.statistics().checkins >= 2, "the check-in at the spread time"
        )
        assert len(agent.state.profiles) == 1


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RELEASE = web.AppKey("release", asyncio.Event)  # set at teardown: handlers that hang return


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """A misbehaving server on 127.0.0.1: register works, check-in does what the test says."""
    runners: list[web.AppRunner] = []
    release = asyncio.Event()

    async def start(checkin: Handler) -> str:
        async def register(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "uq": "u",
                    "doc_version": "latest",
                    "result": True,
                    "code": 0,
                    "message": "success",
                    "build": "fake",
                    "data": {"deviceUuid": "d1", "token": "t1"},
                }
            )

        app = web.Application()
        app[RELEASE] = release
        app.router.add_post("/ota/api/agent/register", register)
        app.router.add_post("/ota/api/agent/checkin", checkin)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    release.set()
    for runner in runners:
        await runner.cleanup()


def envelope_error(status: int, code: int, retry_after: str | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        headers = {"Retry-After": retry_after} if retry_after else None
        return web.json_response(
            {"uq": "u", "result": False, "code": code, "message": "busy", "build": "fake"},
            status=status,
            headers=headers,
        )

    return handler


async def html_page(request: web.Request) -> web.Response:
    return web.Response(
        status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
    )


async def garbage(request: web.Request) -> web.Response:
    return web.Response(status=200, text='{"result": tru', content_type="application/json")


async def reset(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.close()
    await request.app[RELEASE].wait()
    return web.Response()


async def slow(request: web.Request) -> web.Response:
    """Never answers while the test runs (the agent's own timeout must end the request)."""
    await request.app[RELEASE].wait()
    return web.Response()


@pytest.mark.parametrize(
    ("handler", "error", "needle", "timeout_s"),
    [
        (envelope_error(500, 50000), ApiError, "code 50000", SAFETY_S),
        (envelope_error(503, 50300, "7"), ApiError, "code 50300", SAFETY_S),
        (envelope_error(429, 42900, "30"), ApiError, "code 42900", SAFETY_S),
        (html_page, ProtocolError, "HTML page", SAFETY_S),
        (garbage, ProtocolError, "not JSON", SAFETY_S),
        (reset, TransportError, "cannot reach", SAFETY_S),
        # The one real timeout: the server never answers. Had register been the request that
        # timed out on a loaded machine, the error would read the same ("no answer").
        (slow, TransportError, "no answer", 0.5),
    ],
)
async def test_misbehaving_server_gives_clear_errors(
    fake_server: Callable[[Handler], Awaitable[str]],
    tmp_path: Path,
    handler: Handler,
    error: type[Exception],
    needle: str,
    timeout_s: float,
) -> None:
    """500/503/429, HTML, garbage, resets and silence each raise a typed, readable error."""
    base = await fake_server(handler)
    agent, transport = make_agent(base, tmp_path / "state", admin=False, timeout_s=timeout_s)
    with pytest.raises(error, match=needle):
        await agent.run_once()
    await transport.close()


@pytest.mark.parametrize(
    ("handler", "floor"),
    [
        (envelope_error(503, 50300, "7"), 7.0),
        (envelope_error(429, 42900, "30"), 30.0),
    ],
)
async def test_loop_backs_off_for_retry_after(
    fake_server: Callable[[Handler], Awaitable[str]], tmp_path: Path, handler: Handler, floor: float
) -> None:
    """The check-in loop waits at least Retry-After (plus jitter) before trying again."""
    base = await fake_server(handler)
    clock = FakeClock()
    agent, transport = make_agent(base, tmp_path / "state", admin=False, clock=clock)
    runner = asyncio.create_task(agent._checkin_loop())
    try:
        await transport.changes.until(
            lambda: agent.statistics().failures >= 1 and clock.sleeping == 1,
            "a failed check-in, then a backoff sleep",
        )
        deadline = clock.next_deadline()
        assert deadline is not None and floor <= deadline <= floor * 1.1
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await transport.close()


async def test_server_down_at_start(tmp_path: Path) -> None:
    """Nothing listening: run_once fails with 'cannot reach'; the loop retries with backoff: a
    quick first retry, then half to one and a half check-in intervals (60 s configured)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    agent, transport = make_agent(base, tmp_path / "state", admin=False)
    with pytest.raises(TransportError, match="cannot reach"):
        await agent.run_once()
    clock = FakeClock()
    looping, transport2 = make_agent(base, tmp_path / "state2", admin=False, clock=clock)
    runner = asyncio.create_task(looping._checkin_loop())
    try:
        await transport2.changes.until(
            lambda: looping.statistics().failures == 1 and clock.sleeping == 1,
            "a first failure, then a backoff sleep",
        )
        deadline = clock.next_deadline()
        assert deadline is not None and 0 <= deadline <= 1.0  # first retry: quick, in [0, 1]
        clock.advance(1.0)
        await transport2.changes.until(
            lambda: looping.statistics().failures == 2 and clock.sleeping == 1,
            "a second failure after the backoff, then a longer sleep",
        )
        deadline = clock.next_deadline()
        assert deadline is not None and 30 <= deadline <= 90  # then 0.5..1.5 x the interval
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await transport.close()
        await transport2.close()


async def test_wake_on_the_push_channel_wakes_the_device(
    server: Server, admin: Client, clock: FixedClock, tmp_path: Path
) -> None:
    """A sleeping device woken by wakeToApply wakes its platform and checks in awake."""
    from agent.platforms.simulated import SimulatedPlatform

    agent_clock = FakeClock()
    agent, transport = make_agent(server.base, tmp_path / "state", clock=agent_clock)
    platform = agent.platform
    assert isinstance(platform, SimulatedPlatform)
    platform.is_sleeping = True
    async with running(agent):
        await transport.changes.until(
            lambda: (
                agent.statistics().checkins >= 1
                and agent.push_connected
                and agent_clock.sleeping == 1
            ),
            "checked in asleep, connected, waiting for the next check-in",
        )
        clock.advance(5)
        await admin.post(
            "/ota/api/profile/save", {"scope": {"device": ["S1"]}, "profile": {"wakeToApply": True}}
        )
        await transport.changes.until(
            lambda: not platform.is_sleeping and agent.statistics().checkins >= 2,
            "woken by the push channel, then checked in",
        )


async def test_state_failure_ends_the_run_with_its_message(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """If the state dir stops being writable, run() ends with a StateError, not a task group."""
    from agent.errors import StateError

    agent, _ = make_agent(server.base, tmp_path / "state")

    def broken(state: object) -> None:
        raise StateError("cannot write state.json: No space left on device")

    agent.state_store.save = broken  # type: ignore[method-assign]
    with pytest.raises(StateError, match="No space left"):
        async with asyncio.timeout(SAFETY_S):
            await agent.run(asyncio.Event())
