"""Hostile values (issue 12, items 1, 6 and the value parts of 8), end to end over loopback.

Each reproduction is sent byte for byte as the issue gives it: the answer is the error envelope
with 40000 (not JSON) or 40001 (JSON, but a value out of range, naming its path), nothing is
stored (read back from SQLite), and the rest of the site, and every other site, keeps working.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import pytest
from structlog.testing import capture_logs

from server.clock import FixedClock
from server.context import SERVICES
from server.errors import Internal
from server.services.checkins import Checkins, DeviceState
from server.store.db import Database
from tests.conftest import StartServer
from tests.helpers import NOW_MS, Client, Server
from tests.server.test_agent_api import CHECKIN, enroll, event

CHECKIN_PATH = "/ota/api/agent/checkin"
TWO_63 = 2**63


def _profile_count(server: Server) -> int:
    return int(server.sql("SELECT COUNT(*) FROM profiles")[0][0])


async def _reads_work(admin: Client, device: Client) -> None:
    """The site's profile reads, admin and device side, answer 200."""
    for path in ("/ota/api/profile/all", "/ota/api/profile/find"):
        reply = await admin.get(path)
        assert reply.status == 200, (path, reply.body)
    assert (await device.get("/ota/api/agent/profiles")).status == 200


# --- Item 1: one check-in must not poison the batched writer -----------------------------------


async def test_checkin_over_64_bits_is_refused_alone(
    server: Server, admin: Client, other: Client
) -> None:
    """`{"states":{"clientVersion":9223372036854775808}}` is 40001 naming the field, for that
    request alone: nothing of it is stored, and changed check-ins of this and another site are
    written (before their answer) right after."""
    mine = await enroll(admin, "D1")
    theirs = await enroll(other, "B1")
    assert (await mine.post(CHECKIN_PATH, CHECKIN)).status == 200
    reply = await mine.call(
        "POST", CHECKIN_PATH, raw=b'{"states":{"clientVersion":9223372036854775808}}'
    )
    assert (reply.status, reply.code, reply.body["result"]) == (400, 40001, False), reply.body
    assert "states.clientVersion" in reply.body["message"]
    assert str(2**63 - 1) in reply.body["message"]
    assert server.sql("SELECT client_version FROM devices WHERE serial_no = 'D1'")[0][0] == 3
    for client, serial, version in ((theirs, "B1", 7), (mine, "D1", 8)):
        changed = {**CHECKIN, "states": {"clientVersion": version, "state": "online"}}
        assert (await client.post(CHECKIN_PATH, changed)).status == 200
        stored = server.sql("SELECT client_version FROM devices WHERE serial_no = ?", serial)
        assert stored[0][0] == version


async def test_battery_takes_the_whole_signed_64_bit_range(server: Server, admin: Client) -> None:
    """-2^63 is a 64-bit integer like any other (the fuzzer found it refused); one below is not."""
    mine = await enroll(admin, "D2")
    low = {**CHECKIN, "power": {"battery": -(2**63)}}
    assert (await mine.post(CHECKIN_PATH, low)).status == 200
    reply = await mine.call("POST", CHECKIN_PATH, raw=b'{"power":{"battery":-9223372036854775809}}')
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert "power.battery" in reply.body["message"]


async def _admin_of(server: Server, http: aiohttp.ClientSession, name: str) -> Client:
    site = server.sites[name]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    return client


def _last_checked_in(server: Server, serial: str) -> int:
    return int(server.sql("SELECT last_checked_in FROM devices WHERE serial_no = ?", serial)[0][0])


async def test_unwritable_row_is_dropped_alone_and_acknowledged_checkins_survive_stop(
    server_factory: StartServer, http: aiohttp.ClientSession, clock: Any
) -> None:
    """Defence in depth: a row that cannot be written (here 2^63, past validation) fails its own
    check-in alone (50000) with one `checkins.rows_dropped` event and is never re-queued; the
    other site's acknowledged heartbeat in the same batch is written, and the heartbeat
    acknowledged after it is written by the clean stop (the periodic flush never runs here)."""
    server = await server_factory(checkin_flush_s=3600.0)
    mine = await enroll(await _admin_of(server, http, "alpha"), "D1")
    theirs = await enroll(await _admin_of(server, http, "beta"), "B1")
    for device in (mine, theirs):
        assert (await device.post(CHECKIN_PATH, CHECKIN)).status == 200
    assert server.app is not None
    checkins = server.app[SERVICES].checkins
    device_uuid = server.sql("SELECT uuid FROM devices WHERE serial_no = 'D1'")[0][0]
    state = await checkins.device(device_uuid)
    assert state is not None
    clock.advance(30)
    assert (await theirs.post(CHECKIN_PATH, CHECKIN)).status == 200  # a heartbeat: pending
    with capture_logs() as logs, pytest.raises(Internal):
        await checkins.record(
            state, client_version=TWO_63, sleeping=False, interval_s=60, report={}
        )
    dropped = [e for e in logs if e["event"] == "checkins.rows_dropped"]
    assert len(dropped) == 1 and dropped[0]["devices"] == [device_uuid], logs
    assert checkins.statistics().pending == 0  # not re-queued
    assert _last_checked_in(server, "B1") == NOW_MS + 30_000  # written in that same flush
    clock.advance(30)
    assert (await theirs.post(CHECKIN_PATH, CHECKIN)).status == 200  # acknowledged, pending
    await server.stop()
    assert _last_checked_in(server, "B1") == NOW_MS + 60_000
    assert server.sql("SELECT client_version FROM devices WHERE serial_no = 'D1'")[0][0] == 3


class GatedDb:
    """A database whose writes wait for `release` (as behind another write in the writer
    thread); each write that completes is recorded as (function name, args)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.written: list[tuple[str, tuple[Any, ...]]] = []

    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.started.set()
        await self.release.wait()
        self.written.append((fn.func.__name__, args))  # type: ignore[attr-defined]


async def test_a_flush_cut_by_shutdown_still_writes_its_batch() -> None:
    """The flush loop cancelled while its batch waits for the writer (the app's shutdown) does
    not lose the batch: the final flush waits for that write, then writes what came after."""
    db = GatedDb()
    checkins = Checkins(cast(Database, db), FixedClock(NOW_MS), flush_interval_s=3600.0)
    state = DeviceState(
        uuid="d1",
        site_uuid="s",
        serial="D1",
        group_uuid=None,
        enrolled=True,
        client_version=1,
        sleeping=False,
        interval_s=60,
        report="{}",
        inventory_hash=None,
        last_checked_in=None,
    )
    await checkins.record(state, client_version=1, sleeping=False, interval_s=60, report={})
    cut = asyncio.create_task(checkins.flush())
    await db.started.wait()
    cut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cut
    checkins.channel("d1", connected=True)  # acknowledged after the cut batch began
    final = asyncio.create_task(checkins.flush())
    db.release.set()
    await final
    assert [name for name, _ in db.written] == ["write_batch", "write_batch"]
    assert [len(args[0]) for _, args in db.written] == [1, 0]  # the heartbeat, then
    assert db.written[1][1][1] == [("d1", True, NOW_MS)]  # the channel change
    assert checkins.statistics().pending == 0


# --- Item 6: stored values that break reads forever --------------------------------------------

SURROGATE_PROFILE = b'{"isGlobal":true,"settings":{"w":"\\ud800"}}'
NESTED_40 = b'{"isGlobal":true,"settings":{"w":' + b"[" * 40 + b"]" * 40 + b"}}"
NESTED_975 = b'{"isGlobal":true,"settings":{"w":' + b"[" * 975 + b"]" * 975 + b"}}"
NESTED_100K = b'{"isGlobal":true,"settings":{"w":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"


@pytest.mark.parametrize(
    ("raw", "code", "needle"),
    [
        (SURROGATE_PROFILE, 40001, "settings.w: "),
        (b'{"isGlobal":true,"settings":{"\\udc00":1}}', 40001, "settings: "),
        (b'{"isGlobal":true,"settings":{"w":"\xed\xa0\x80"}}', 40000, "UTF-8"),
        (NESTED_40, 40001, "settings.w" + "[0]" * 30 + ": nested deeper than 32 levels"),
        (NESTED_975, 40001, "nested deeper than 32 levels"),
        (NESTED_100K, 40001, "nested deeper than 32"),
        (b'{"isGlobal":true,"settings":{"w":NaN}}', 40000, "NaN"),
        (b'{"isGlobal":true,"settings":{"w":Infinity}}', 40000, "Infinity"),
        (b'{"isGlobal":true,"settings":{"w":-Infinity}}', 40000, "-Infinity"),
        (b'{"isGlobal":true,"settings":{"w":1e400}}', 40001, "settings.w: must be a finite"),
        (b'{"isGlobal":true,"settings":{"w":9223372036854775808}}', 40001, "settings.w: "),
        (b'{"isGlobal":true,"settings":{"w":-9223372036854775809}}', 40001, "settings.w: "),
        (b'{"isGlobal":true,"settings":{"w":1' + b"0" * 5000 + b"}}", 40001, "digits"),
        (b'{"isGlobal":true,"apps":{"x":"\\ud800"}}', 40001, "apps.x: "),
        (b'{"isGlobal":true,"otas":[{"uuid":"u","x":[1e999]}]}', 40001, "otas[0].x[0]: "),
    ],
)
async def test_profile_values_that_cannot_be_read_back_are_refused(
    server: Server, admin: Client, raw: bytes, code: int, needle: str
) -> None:
    """Lone surrogates, nesting past 32, NaN/Infinity, non-finite floats, integers outside 64
    bits or of 5,000 digits are refused by profile/save naming the value; nothing is stored and
    profile/all, profile/find and agent/profiles keep answering 200."""
    device = await enroll(admin, "D1")
    reply = await admin.call("POST", "/ota/api/profile/save", raw=raw)
    assert (reply.status, reply.code) == (400, code), reply.body
    assert needle in reply.body["message"], reply.body["message"]
    assert _profile_count(server) == 0
    await _reads_work(admin, device)


async def test_profile_edit_refuses_unreadable_values(server: Server, admin: Client) -> None:
    """profile/edit applies the same checks: the stored profile is unchanged."""
    saved = await admin.post("/ota/api/profile/save", {"isGlobal": True, "settings": {"w": 1}})
    loaded = (await admin.get("/ota/api/profile/findBy", uuid=saved.data["uuid"])).data
    raw = b'{"updated":%d,"isGlobal":true,"settings":{"w":"\\ud800"}}' % loaded["updated"]
    reply = await admin.call(
        "POST", "/ota/api/profile/edit", raw=raw, params={"uuid": saved.data["uuid"]}
    )
    assert (reply.status, reply.code) == (400, 40001) and "settings.w" in reply.body["message"]
    after = (await admin.get("/ota/api/profile/findBy", uuid=saved.data["uuid"])).data
    assert after == loaded
    stale = await admin.post(
        "/ota/api/profile/edit?uuid=" + saved.data["uuid"], {**loaded, "updated": TWO_63}
    )
    assert (stale.status, stale.code) == (400, 40001) and "updated" in stale.body["message"]


async def test_inventory_with_lone_surrogate_is_refused_and_not_committed(
    server: Server, admin: Client
) -> None:
    """`PUT agent/apps` with a lone surrogate label is 40001 naming it, commits nothing, and
    device/app/installed keeps answering 200."""
    device = await enroll(admin, "D1")
    raw = b'{"category":"all","apps":[{"packageName":"com.example","label":"\\ud800"}]}'
    reply = await device.call("PUT", "/ota/api/agent/apps", raw=raw)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert "apps[0].label" in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM app_inventory")[0][0] == 0
    installed = await admin.get("/ota/api/device/app/installed", serialNo="D1")
    assert installed.status == 200 and installed.data["apps"] == []
    big = {"apps": [{"packageName": "com.example", "appSize": TWO_63}]}
    reply = await device.call("PUT", "/ota/api/agent/apps", json_body=big)
    assert (reply.status, reply.code) == (400, 40001) and "apps[0].appSize" in reply.body["message"]
    assert server.sql("SELECT COUNT(*) FROM app_inventory")[0][0] == 0


# --- Item 8: integers past 64 bits, times past 9999, nesting in `filter`, long serials ---------


def _raw_event(**fields: str) -> bytes:
    """One event as raw JSON whose values are given as JSON text (to keep 1e20 as written)."""
    base = event(None, "app", "installed", target="com.example")
    parts = [f'"{k}":"{v}"' for k, v in base.items() if v is not None and k not in fields]
    parts += [f'"{k}":{v}' for k, v in fields.items()]
    return ("[{" + ",".join(parts) + "}]").encode()


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"versionCode": "9223372036854775808"}, "[0].versionCode: "),
        ({"at": "1e20"}, "[0].at: "),
        ({"at": "100000000000000000000"}, "[0].at: "),
        ({"at": "253402300800000"}, "[0].at: "),
        ({"at": "-1"}, "[0].at: "),
        ({"at": '"9999-12-31T23:59:59-23:59"'}, "[0].at: "),
        ({"at": '"0001-01-01T00:00:00Z"'}, "[0].at: "),
    ],
)
async def test_event_values_out_of_range_are_refused(
    server: Server, admin: Client, fields: dict[str, str], needle: str
) -> None:
    """An event `versionCode` of 2^63, or an `at` outside 1970..9999 (1e20 among them), is
    40001 naming it; no event, app status or inventory is stored."""
    device = await enroll(admin, "D1")
    reply = await device.call("POST", "/ota/api/agent/events", raw=_raw_event(**fields))
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert needle in reply.body["message"], reply.body["message"]
    for table in ("events", "app_status", "app_inventory"):
        assert server.sql(f"SELECT COUNT(*) FROM {table}")[0][0] == 0, table


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"profile":{"startsOn":1e20}}', "profile.startsOn: "),
        (b'{"profile":{"startsOn":100000000000000000000}}', "profile.startsOn: "),
        (b'{"profile":{"startsOn":"9999-12-31T23:59:59-23:59"}}', "profile.startsOn: "),
        (b'{"schedule_date":{"start_on":100000000000000000000}}', "schedule_date.start_on: "),
        (b'{"profile":{"endsOption":"on","ends":100000000000000000000}}', "profile.ends: "),
        (b'{"profile":{"endsOption":"after","ends":9223372036854775808}}', "profile.ends: "),
    ],
)
async def test_profile_times_out_of_range_are_refused(
    server: Server, admin: Client, body: bytes, needle: str
) -> None:
    """Profile times outside 1970..9999 and counts past 64 bits are 40001 naming the field."""
    reply = await admin.call("POST", "/ota/api/profile/save", raw=body)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert needle in reply.body["message"], reply.body["message"]
    assert _profile_count(server) == 0


LIST_PATHS = (
    "/ota/api/device/find",
    "/ota/api/profile/find",
    "/ota/api/app/find",
    "/ota/api/ota/find",
    "/ota/api/logs/find",
)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        pytest.param("[" * 1000 + "]" * 1000, "filter: ", id="array-1000-deep"),
        pytest.param('{"serialNo":' + "[" * 1000 + "]" * 1000 + "}", "filter: ", id="1000-deep"),
        pytest.param('{"serialNo":' + "[" * 20 + "]" * 20 + "}", "filter.serialNo", id="20-deep"),
        pytest.param('{"serialNo":"\\ud800"}', "filter.serialNo: ", id="lone-surrogate"),
        pytest.param('{"serialNo":NaN}', "filter: ", id="nan"),
        pytest.param(
            '{"lastCheckedInBefore":9223372036854775808}',
            "filter.lastCheckedInBefore: ",
            id="2^63",
        ),
    ],
)
async def test_hostile_filters_are_refused(admin: Client, raw: str, needle: str) -> None:
    """`filter` nested 1,000 deep (or at all past a list of values), with a lone surrogate, NaN,
    or an integer past 64 bits is 40001 on every list endpoint; never a 500."""
    for path in LIST_PATHS:
        reply = await admin.get(path, filter=raw)
        assert (reply.status, reply.code) == (400, 40001), (path, reply.body)
        if path == "/ota/api/device/find" or needle == "filter: ":
            assert needle in reply.body["message"], (path, reply.body["message"])


async def test_filter_integer_past_64_bits_is_refused(admin: Client) -> None:
    """An integer filter value past 64 bits (app/find `appInfo.versionCode`) is 40001."""
    reply = await admin.get("/ota/api/app/find", filter=f'{{"appInfo.versionCode":[1,{TWO_63}]}}')
    assert (reply.status, reply.code) == (400, 40001)
    assert "filter.appInfo.versionCode[1]" in reply.body["message"]


async def test_scope_device_serials_follow_device_save_rules(server: Server, admin: Client) -> None:
    """A 100,000-character serial in `scope.device` is 40001 as in device/save (at most 128);
    no profile is saved and no device registered."""
    long_serial = "S" * 100_000
    reply = await admin.post("/ota/api/profile/save", {"scope": {"device": [long_serial]}})
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert "scope.device[0]: longer than 128 characters" in reply.body["message"]
    assert _profile_count(server) == 0
    assert server.sql("SELECT COUNT(*) FROM devices")[0][0] == 0
    save = [{"profile": {"hardware_info": {"serial_no": long_serial}}}]
    reply = await admin.post("/ota/api/device/save", save)
    assert "[0].profile.hardware_info.serial_no: longer than 128" in reply.body["message"]
    key_only = Client(admin.http, admin.base, admin.key)
    reply = await key_only.post("/ota/api/agent/register", {"serialNo": long_serial})
    assert (reply.code, reply.body["message"]) == (40001, "serialNo: longer than 128 characters")


async def test_a_lone_surrogate_stored_by_an_older_server_stays_readable(
    server: Server, admin: Client
) -> None:
    """Defence in depth for databases written before these checks: a stored lone surrogate is
    sent escaped (still JSON) instead of making profile/all answer 500 for the whole site."""
    device = await enroll(admin, "D1")
    saved = await admin.post("/ota/api/profile/save", {"isGlobal": True, "settings": {"w": 1}})
    doc = json.loads(server.sql("SELECT doc FROM profiles")[0][0])
    doc["settings"]["w"] = "\ud800"
    server.sql("UPDATE profiles SET doc = ? WHERE uuid = ?", json.dumps(doc), saved.data["uuid"])
    reply = await admin.get("/ota/api/profile/all")
    assert reply.status == 200 and reply.data[0]["settings"]["w"] == "\ud800"
    await _reads_work(admin, device)
