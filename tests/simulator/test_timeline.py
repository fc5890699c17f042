"""The admin client and the timeline against the real server: names resolved to uuids, devices
saved in bulk, each action at its time on a FakeClock, every admin request observed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web

from agent.clock import FakeClock
from agent.transport.base import Exchange
from simulator.admin import (
    AdminClient,
    AdminError,
    AdminRefused,
    AdminUnauthorized,
    TargetUnreachable,
    device_body,
)
from simulator.plan.expand import expand
from simulator.plan.model import ActionKind, Plan
from simulator.scenario import parse
from simulator.timeline import ActionResult, GeneratedArtifacts, Timeline, merge
from tests.helpers import Client, Server

SCENARIO = """\
[scenario]
duration_s = 60
devices = 6

[catalog.apps.tool-2]
package = "com.example.tool"
version_code = 2
label = "Tool"

[catalog.otas.k1-b2]
post_build = "acme/k1/k1:14/B2/2:user/release-keys"
build_date = 1706745600
device_id = "k1"
product_id = "k1_eu"
ab_update = true
size_kb = 4

[kinds.kiosk]
count = 4
model = "K1"
group = "north"

[kinds.spare]
count = 2
model = "K1"

[arrival]
process = "even"
rate = 10

[[timeline]]
at_s = 0
action = "create_group"
name = "stores"

[[timeline]]
at_s = 0
action = "create_group"
name = "north"
parent = "stores"

[[timeline]]
at_s = 5
action = "upload_app"
app = "tool-2"

[[timeline]]
at_s = 5
action = "upload_ota"
ota = "k1-b2"

[[timeline]]
at_s = 10
action = "save_profile"
name = "roll"
[timeline.body]
scope = { group = ["stores"] }
apps = { install = [{ app = "tool-2", grant_all = true }] }
otas = ["k1-b2"]
settings = { otas = { need_ac = true } }

[[timeline]]
at_s = 15
action = "edit_profile"
name = "roll"
changes = { profile = { wakeToApply = true }, settings = { volume = 3 } }

[[timeline]]
at_s = 20
action = "resave_devices"
kind = "kiosk"
count = 2

[[timeline]]
at_s = 25
action = "revoke_tokens"
"""


def plan_of(text: str = SCENARIO) -> Plan:
    return expand(parse(text.encode(), file="t.toml"), 1)


class Recorder:
    """The observer: every Exchange, and an event per ActionResult count reached."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.results: list[ActionResult] = []
        self._waiters: dict[int, asyncio.Event] = {}

    def __call__(self, exchange: Exchange, /) -> None:
        self.exchanges.append(exchange)

    def on_action(self, result: ActionResult) -> None:
        self.results.append(result)
        for count, event in self._waiters.items():
            if len(self.results) >= count:
                event.set()

    async def wait_results(self, count: int) -> None:
        event = self._waiters.setdefault(count, asyncio.Event())
        if len(self.results) >= count:
            return
        await event.wait()

    def names(self) -> list[str]:
        return [e.name for e in self.exchanges]


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(
    server: Server, recorder: Recorder, fake_clock: FakeClock
) -> AsyncIterator[AdminClient]:
    """An admin of site alpha whose requests are timed on the FakeClock the timeline runs on."""
    site = server.sites["alpha"]
    async with AdminClient(
        server.base,
        api_key=site.key,
        email=site.email,
        password=site.password,
        observer=recorder,
        clock=fake_clock,
    ) as admin:
        yield admin


# -- the admin client -------------------------------------------------------------------------


async def test_devices_are_saved_in_bulk_and_listed_over_every_page(
    client: AdminClient, recorder: Recorder
) -> None:
    """2,500 devices take three device/save requests; device/find pages through them all."""
    group = await client.save_group("bulk")
    bodies = [device_body(f"B-{i:05d}", model="M", group_uuid=group["uuid"]) for i in range(2500)]
    assert await client.save_devices(bodies) == 2500
    assert recorder.names().count("admin:device/save") == 3
    assert await client.device_exists("B-01234")
    assert not await client.device_exists("B-99999")
    listed = await client.devices({"deviceGroup.uuid": [group["uuid"]]})
    assert sorted(d["profile"]["hardware_info"]["serial_no"] for d in listed) == [
        f"B-{i:05d}" for i in range(2500)
    ]
    assert recorder.names().count("admin:device/find") == 5
    assert recorder.names()[0] == "admin:auth"
    assert all(e.status == 200 and e.error is None for e in recorder.exchanges)
    assert client.saves["B-00000"] == 1


async def test_a_refusal_is_an_admin_error_with_the_envelope_code(client: AdminClient) -> None:
    with pytest.raises(AdminRefused) as caught:
        await client.save_profile({"apps": {"install": [{"uuid": "no-such-app"}]}})
    error = caught.value
    assert (error.code, error.status) == (40001, 400)
    assert "no-such-app" in str(error) and "\n" not in str(error)
    assert error.exit_code == 3


async def test_wrong_credentials_are_unauthorized(server: Server) -> None:
    site = server.sites["alpha"]
    admin = AdminClient(server.base, api_key=site.key, email=site.email, password="wrong")
    with pytest.raises(AdminUnauthorized, match=r"/portal/V1/auth: .*code 40100, HTTP 401"):
        await admin.__aenter__()


async def test_an_unreachable_target(unused_tcp_port: int) -> None:
    admin = AdminClient(f"http://127.0.0.1:{unused_tcp_port}", api_key="k", email="e", password="p")
    with pytest.raises(TargetUnreachable, match=r"127\.0\.0\.1"):
        await admin.__aenter__()


async def test_a_target_that_is_no_midm_backend() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        admin = AdminClient(f"http://127.0.0.1:{port}", api_key="k", email="e", password="p")
        with pytest.raises(TargetUnreachable, match="without a MiDM envelope"):
            await admin.__aenter__()
    finally:
        await runner.cleanup()


# -- the timeline -----------------------------------------------------------------------------


async def test_setup_creates_the_groups_at_0_and_saves_every_device_into_its_group(
    client: AdminClient, admin: Client
) -> None:
    plan = plan_of()
    timeline = Timeline(plan, client)
    assert await timeline.setup() == 6
    assert set(timeline.groups) == {"stores", "north"}
    north = (await admin.get("/ota/api/device/group/findBy", uuid=timeline.groups["north"])).data
    assert north["parentUuid"] == timeline.groups["stores"]
    assert north["deviceNumbers"] == 4
    devices = (await admin.get("/ota/api/device/find", size="50")).data
    by_serial = {d["profile"]["hardware_info"]["serial_no"]: d for d in devices}
    assert set(by_serial) == {d.serial for d in plan.devices}
    for device in plan.devices:
        group = by_serial[device.serial].get("deviceGroup") or {}
        expected = timeline.groups["north"] if device.kind == "kiosk" else None
        assert group.get("uuid") == expected
    assert [r.action for r in timeline.results] == [ActionKind.CREATE_GROUP] * 2


async def test_each_action_runs_at_its_time_with_names_resolved_to_uuids(
    server: Server, client: AdminClient, admin: Client, recorder: Recorder, fake_clock: FakeClock
) -> None:
    """On a FakeClock nothing runs before its time; uploads, the profile save (group, app and
    image by uuid), the edit (merged into the loaded profile), the re-save and the token
    revocation each happen once time reaches them, measured from their intended time."""
    plan = plan_of()
    clock = fake_clock
    timeline = Timeline(plan, client, on_action=recorder.on_action)
    await timeline.setup()
    stop = asyncio.Event()
    old_token = client.token
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(timeline.run(stop))
        await asyncio.sleep(0)
        assert len(recorder.results) == 2  # the groups, in setup
        clock.advance(7)  # two seconds late for the uploads at 5 s
        await recorder.wait_results(4)
        clock.advance(3)
        await recorder.wait_results(5)
        clock.advance(5)
        await recorder.wait_results(6)
        clock.advance(5)
        await recorder.wait_results(7)
        clock.advance(5)
        await recorder.wait_results(8)
    assert [r.error for r in recorder.results] == [None] * 8
    assert [r.started_s for r in recorder.results[2:]] == [7, 7, 10, 15, 20, 25]

    upload = next(e for e in recorder.exchanges if e.name == "admin:app/upload")
    assert (upload.intended, upload.started, upload.lateness) == (5.0, 7.0, 2.0)
    ota_upload = next(e for e in recorder.exchanges if e.name == "admin:ota/upload")
    assert (ota_upload.intended, ota_upload.lateness) == (5.0, 2.0)  # also due at 5 s

    profile = (await admin.get("/ota/api/profile/findBy", uuid=timeline.profiles["roll"])).data
    assert profile["scope"]["group"] == [timeline.groups["stores"]]
    assert profile["apps"]["install"][0]["uuid"] == timeline.apps["tool-2"]
    assert profile["apps"]["install"][0]["grant_all"] is True
    assert profile["otas"] == [timeline.otas["k1-b2"]]
    assert profile["settings"]["otas"]["need_ac"] is True  # kept by the edit's merge
    assert profile["profile"]["wakeToApply"] is True and profile["settings"]["volume"] == 3
    assert profile["profile"]["name"] == "roll"
    assert recorder.results[4].uuid == timeline.profiles["roll"] == recorder.results[5].uuid

    resaved = plan.timeline[6].args["serials"]
    assert timeline.resaved == set(resaved) and len(resaved) == 2
    assert all(client.saves[s] == 2 for s in resaved)
    assert sum(1 for n in client.saves.values() if n == 2) == 2

    assert client.token != old_token
    stale = Client(admin.http, server.base, server.sites["alpha"].key, old_token)
    assert (await stale.get("/portal/V1/auth/token-verify")).status == 401
    assert recorder.names()[-2:] == ["admin:logout", "admin:auth"]
    await client.verify_token()


async def test_run_stops_when_told_and_leaves_later_actions(
    client: AdminClient, recorder: Recorder
) -> None:
    plan = plan_of()
    timeline = Timeline(plan, client, on_action=recorder.on_action)
    await timeline.setup()
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(timeline.run(stop))
        await asyncio.sleep(0)
        stop.set()
    assert task.done() and len(recorder.results) == 2


class BrokenApks(GeneratedArtifacts):
    def apk(self, args: Mapping[str, Any]) -> bytes:
        return b"not an apk"


async def test_a_refused_action_is_recorded_and_the_timeline_goes_on(
    client: AdminClient, recorder: Recorder, fake_clock: FakeClock
) -> None:
    """The upload of a bad APK fails (40001); the profile naming that app fails with it, one
    line each; the image upload and the rest still run."""
    clock = fake_clock
    timeline = Timeline(plan_of(), client, artifacts=BrokenApks(), on_action=recorder.on_action)
    await timeline.setup()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(timeline.run(asyncio.Event(), t0=0.0))
        clock.advance(30)
        await recorder.wait_results(8)
    errors = {r.action: r.error for r in recorder.results if r.error is not None}
    assert set(errors) == {ActionKind.UPLOAD_APP, ActionKind.SAVE_PROFILE, ActionKind.EDIT_PROFILE}
    assert "code 40001" in errors[ActionKind.UPLOAD_APP]
    assert errors[ActionKind.SAVE_PROFILE] == "'tool-2' was not created (its action failed)"
    assert "k1-b2" in timeline.otas


async def test_a_failure_at_0_fails_the_setup(client: AdminClient) -> None:
    text = SCENARIO.replace('at_s = 5\naction = "upload_app"', 'at_s = 0\naction = "upload_app"')
    timeline = Timeline(plan_of(text), client, artifacts=BrokenApks())
    with pytest.raises(AdminError, match=r"timeline at 0 s, upload_app tool-2: .*app/upload"):
        await timeline.setup()


@pytest.mark.parametrize(
    ("base", "changes", "merged"),
    [
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}, {"a": {"b": 3, "c": 2}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, {"b": {"c": 1}}, {"a": 1, "b": {"c": 1}}),
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
    ],
)
def test_merge_tables_key_by_key_and_replace_the_rest(
    base: dict[str, Any], changes: dict[str, Any], merged: dict[str, Any]
) -> None:
    assert merge(base, changes) == merged
