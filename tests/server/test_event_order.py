"""A device's reports are ordered by when the server received them, not by the device's clock
(issue 14, scenarios/clock-skew.toml): a device whose clock went back a day still moves its
profile progress, its AppStatus and its inventory; its events keep their own `at` as data.

Over the real device API on 127.0.0.1 with the injected server clock (`clock`), which moves
between batches as time would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.clock import FixedClock
from server.wire import iso
from tests.helpers import NOW_MS, Client
from tests.server.test_agent_api import enroll, event

DAY_MS = 86_400_000
PACKAGE = "com.example.basic"


def at(ms: int) -> str:
    """The wire form of a device time (`at`), epoch ms as an ISO string."""
    stamp = iso(ms)
    assert stamp is not None
    return stamp


def dated(profile: str | None, kind: str, status: str, ms: int, **extra: Any) -> dict[str, Any]:
    return {**event(profile, kind, status, **extra), "at": at(ms)}


async def status_row(admin: Client, profile: str) -> dict[str, Any]:
    data = (await admin.get("/ota/api/profile/status", uuid=profile)).data
    (row,) = data["devices"]
    return {"applied": data["applied"], "deferred": data["deferred"], **row}


async def app_of(admin: Client) -> dict[str, Any]:
    reply = await admin.get("/ota/api/device/app/status", serialNo="D1", packageName=PACKAGE)
    data: dict[str, Any] = reply.data
    return data


@pytest.mark.parametrize(
    ("first_ms", "then_ms"),
    [
        (NOW_MS, NOW_MS - DAY_MS),  # the clock set back a day between two batches
        (NOW_MS + DAY_MS, NOW_MS),  # a day ahead, then put right
    ],
    ids=["set-back", "put-right"],
)
async def test_a_later_batch_wins_whatever_the_device_clock_says(
    admin: Client, clock: FixedClock, first_ms: int, then_ms: int
) -> None:
    """deferred then applied, a minute apart on the server, the second batch dated earlier by
    the device: the profile shows applied (updated: the server's time of the second batch),
    the app version 2 installed, the inventory version 2; the events keep the device's `at`
    and the server's `received`."""
    profile = (await admin.post("/ota/api/profile/save", {"scope": {"device": ["D1"]}})).data[
        "uuid"
    ]
    device = await enroll(admin, "D1")
    inventory = {"category": "user", "apps": [{"packageName": PACKAGE, "versionCode": 1}]}
    assert (await device.call("PUT", "/ota/api/agent/apps", json_body=inventory)).status == 200
    first = [
        dated(profile, "app", "installed", first_ms, target=PACKAGE, versionCode=1),
        dated(profile, "profile", "deferred", first_ms, reason="need_ac"),
    ]
    assert (await device.post("/ota/api/agent/events", first)).data == 2
    assert (await status_row(admin, profile))["status"] == "deferred"
    clock.advance(60)
    then = [
        dated(profile, "app", "installed", then_ms, target=PACKAGE, versionCode=2),
        dated(profile, "profile", "applied", then_ms),
    ]
    assert (await device.post("/ota/api/agent/events", then)).data == 2

    row = await status_row(admin, profile)
    assert (row["applied"], row["deferred"], row["status"]) == (1, 0, "applied")
    assert row["updated"] == at(NOW_MS + 60_000)  # received, not the device's `at`
    assert (await app_of(admin))["versionCode"] == 2
    listed = (await admin.get("/ota/api/device/app/installed", serialNo="D1")).data
    assert [(a["packageName"], a["versionCode"]) for a in listed["apps"]] == [(PACKAGE, 2)]
    assert listed["reported"] == at(NOW_MS + 60_000)
    logs = await admin.get(
        "/ota/api/logs/find", filter=json.dumps({"forWhat": profile, "status": "applied"})
    )
    (applied,) = logs.data
    assert (applied["at"], applied["received"]) == (at(then_ms), at(NOW_MS + 60_000))


async def test_within_a_batch_the_device_order_wins(admin: Client) -> None:
    """One batch is stored in its own order (the device's queue order): the last event of a
    profile in it is its status, however the device dated them."""
    profile = (await admin.post("/ota/api/profile/save", {"scope": {"device": ["D1"]}})).data[
        "uuid"
    ]
    device = await enroll(admin, "D1")
    batch = [
        dated(profile, "profile", "deferred", NOW_MS, reason="need_ac"),
        dated(profile, "profile", "applied", NOW_MS - DAY_MS),
    ]
    assert (await device.post("/ota/api/agent/events", batch)).data == 2
    assert (await status_row(admin, profile))["status"] == "applied"


async def test_a_retried_batch_moves_nothing_back(admin: Client, clock: FixedClock) -> None:
    """A batch sent again after a later one (its answer was lost, say) is skipped by its event
    ids: the later status stays."""
    profile = (await admin.post("/ota/api/profile/save", {"scope": {"device": ["D1"]}})).data[
        "uuid"
    ]
    device = await enroll(admin, "D1")
    early = [dated(profile, "profile", "deferred", NOW_MS, reason="need_ac")]
    late = [dated(profile, "profile", "applied", NOW_MS + 1_000)]
    await device.post("/ota/api/agent/events", early)
    clock.advance(10)
    await device.post("/ota/api/agent/events", late)
    clock.advance(10)
    assert (await device.post("/ota/api/agent/events", early)).status == 200
    assert (await status_row(admin, profile))["status"] == "applied"
