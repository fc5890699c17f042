"""Pure agent decisions: the enrollment flow never saves an existing device; backoff; check-in."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import protocol
from agent.core.backoff import ceiling, next_delay, push_delay, with_jitter
from agent.core.checkin import inventory_hash
from agent.core.enrollment import AdminLogin, enrollment
from agent.core.rng import SplitMix64
from agent.errors import ApiError, NotFound, ProtocolError, RateLimited, Unauthorized
from agent.models import AppRecord, BuildInfo, PowerState
from agent.protocol import Credentials, Response

CREDS = Credentials(api_key="k")
ADMIN = AdminLogin(email="a@b.c", password="pw")
HARDWARE = {"serial_no": "S1", "manufacturer": "", "brand": "", "model": "M"}


def ok(data: Any) -> Response:
    return Response(
        status=200,
        body=json.dumps(
            {
                "uq": "u",
                "doc_version": "latest",
                "result": True,
                "code": 0,
                "message": "ok",
                "build": "b",
                "data": data,
            }
        ).encode(),
    )


def error(status: int, code: int, **headers: str) -> Response:
    return Response(
        status=status,
        headers=headers,
        body=json.dumps(
            {"uq": "u", "result": False, "code": code, "message": "nope", "build": "b"}
        ).encode(),
    )


def run_flow(answers: dict[str, Response], admin: AdminLogin | None = ADMIN) -> list[str]:
    """Drive the flow with canned answers per request name; return the names sent."""
    flow = enrollment(CREDS, "S1", HARDWARE, admin)
    sent = []
    request = next(flow)
    while True:
        sent.append(request.name)
        try:
            request = flow.send(answers[request.name])
        except StopIteration as done:
            assert done.value == protocol.Registration(device_uuid="d", token="t")
            return sent


REGISTERED = ok({"deviceUuid": "d", "token": "t"})


def test_new_device_is_saved_once() -> None:
    """Missing device: login, exists (false), save, register."""
    answers = {
        "login": ok({"access_token": "a"}),
        "exists": ok(False),
        "save": ok(None),
        "register": REGISTERED,
    }
    assert run_flow(answers) == ["login", "exists", "save", "register"]


def test_existing_device_is_never_saved() -> None:
    """After a crash, a restart or a lost register answer, exists is true: no save."""
    answers = {"login": ok({"access_token": "a"}), "exists": ok(True), "register": REGISTERED}
    assert run_flow(answers) == ["login", "exists", "register"]


def test_without_admin_credentials_only_register() -> None:
    """No admin login: the flow only registers (the server checks the device exists)."""
    assert run_flow({"register": REGISTERED}, admin=None) == ["register"]


def test_unknown_device_without_admin_is_not_found() -> None:
    """register's 40400 comes out as NotFound."""
    flow = enrollment(CREDS, "S1", HARDWARE, None)
    next(flow)
    with pytest.raises(NotFound):
        flow.send(error(404, 40400))


@pytest.mark.parametrize(
    ("response", "kind", "needle"),
    [
        (
            Response(status=502, body=b"<html><body>Bad gateway</body></html>"),
            ProtocolError,
            "HTML page",
        ),
        (Response(status=200, body=b"{not json"), ProtocolError, "not JSON"),
        (Response(status=200, body=b'{"hello": 1}'), ProtocolError, "not the MiDM envelope"),
        (error(401, 40100), Unauthorized, "code 40100"),
        (error(409, 40900), ApiError, "code 40900"),
    ],
)
def test_decode_names_what_was_wrong(
    response: Response, kind: type[Exception], needle: str
) -> None:
    """Garbage, HTML pages and error envelopes become clear, typed errors."""
    with pytest.raises(kind, match=needle):
        protocol.decode(response, "checkin")


def test_retry_after_is_read() -> None:
    """429 with Retry-After: RateLimited carrying the seconds."""
    with pytest.raises(RateLimited) as caught:
        protocol.decode(error(429, 42900, **{"Retry-After": "12"}), "checkin")
    assert caught.value.retry_after == 12.0


def test_checkin_reply_types_are_checked() -> None:
    """A reply with wrong types is a ProtocolError, not a crash later."""
    with pytest.raises(ProtocolError):
        protocol.parse_checkin_reply({"nextCheckinSeconds": "soon", "profiles": []})
    reply = protocol.parse_checkin_reply(
        {
            "nextCheckinSeconds": 60,
            "inventoryWanted": True,
            "profiles": [{"uuid": "p", "updated": 1}],
        }
    )
    assert reply.next_checkin_s == 60 and reply.profiles[0].uuid == "p"


def test_the_first_retry_is_quick() -> None:
    """Retry 1 is uniform(0, base) whatever the interval: a one-off failure costs a second."""
    rng = SplitMix64(1)
    delays = [next_delay(1, None, rng, interval=600) for _ in range(500)]
    assert all(0 <= d <= 1 for d in delays) and len(set(delays)) == 500
    assert all(0 <= next_delay(1, None, rng, interval=60, base=5) <= 5 for _ in range(100))


@pytest.mark.parametrize("interval", [1, 30, 60, 300, 3600])
def test_later_retries_average_the_ceiling_and_never_beat_the_interval(interval: float) -> None:
    """Retries 2.. are uniform(0.5, 1.5) x ceiling, the ceiling at least the interval: on
    average a failing device asks no more often than it checks in (the herd maths of the
    module docstring). A seeded RandomSource: the same draws every run."""
    rng = SplitMix64(7)
    for attempt in range(2, 16):
        c = ceiling(attempt, interval=interval)
        assert c >= interval and c == max(interval, min(300, 2 ** (attempt - 1)))
        delays = [next_delay(attempt, None, rng, interval=interval) for _ in range(2000)]
        assert all(0.5 * c <= d <= 1.5 * c for d in delays)
        assert sum(delays) / len(delays) == pytest.approx(c, rel=0.03)
        assert min(delays) < 0.55 * c and max(delays) > 1.45 * c  # the whole range is used


@given(
    attempt=st.integers(1, 200),
    interval=st.floats(1, 86_400),
    cap=st.floats(1, 3_600),
)
def test_the_ceiling_is_monotone(attempt: int, interval: float, cap: float) -> None:
    """The ceiling never comes down as failures go on (interval >= base), and is never above
    the longer of the interval and the cap: the cap never cuts the interval."""
    now = ceiling(attempt, interval=interval, cap=cap)
    assert ceiling(attempt + 1, interval=interval, cap=cap) >= now
    assert now <= max(interval, cap)


@given(
    attempt=st.integers(1, 30),
    retry_after=st.floats(0, 3_600),
    interval=st.floats(1, 600),
    seed=st.integers(0, 2**64 - 1),
)
def test_retry_after_is_a_floor_with_up_to_ten_percent(
    attempt: int, retry_after: float, interval: float, seed: int
) -> None:
    """The delay is never under Retry-After, and Retry-After adds at most 10 %: the later of
    the backoff's own draw and the floor."""
    delay = next_delay(attempt, retry_after, SplitMix64(seed), interval=interval)
    top = 1.0 if attempt == 1 else 1.5 * ceiling(attempt, interval=interval)
    assert retry_after <= delay <= max(retry_after * 1.1, top)


@pytest.mark.parametrize("interval", [30, 60, 3600])
def test_a_failure_after_the_server_answered_the_check_in_backs_off_from_quick(
    interval: float,
) -> None:
    """`reached` (a download dropped after a check-in that went through): full jitter over
    1, 2, 4 ... s, never over the interval: a device on a poor link is not held an interval
    for each drop, and one whose failure persists retries once an interval."""
    rng = SplitMix64(11)
    for attempt in range(1, 20):
        top = min(interval, 2 ** (attempt - 1))
        delays = [
            next_delay(attempt, None, rng, interval=interval, reached=True) for _ in range(300)
        ]
        assert all(0 <= d <= top for d in delays) and max(delays) > 0.9 * top
    assert next_delay(2, 30, rng, interval=60, reached=True) >= 30  # Retry-After: a floor still


def test_the_push_channel_retries_quickly_then_over_two_intervals() -> None:
    """The push channel's first reconnect is quick; the next ones wait about twice the
    check-in interval, so that after an outage the check-in, which brings the channel back
    with it, comes first."""
    rng = SplitMix64(3)
    assert all(0 <= push_delay(1, rng, interval=60) <= 1 for _ in range(200))
    for attempt in (2, 3, 5):
        delays = [push_delay(attempt, rng, interval=60) for _ in range(2000)]
        assert all(60 <= d <= 180 for d in delays)
        assert sum(delays) / len(delays) == pytest.approx(120, rel=0.03)
    assert 150 <= push_delay(20, rng, interval=60) <= 450  # the exponential step, capped


def test_devices_told_the_same_retry_after_do_not_return_in_lockstep() -> None:
    delays = [next_delay(1, 30, SplitMix64(seed), interval=60) for seed in range(50)]
    assert all(30 <= d <= 33 for d in delays) and len(set(delays)) > 40
    assert all(54 <= with_jitter(60, random.Random(s)) <= 66 for s in range(50))


def test_checkin_body_and_inventory_hash() -> None:
    """The body carries states, power, network, build; the hash ignores app order."""
    build = BuildInfo(fingerprint="f")
    power = PowerState(ac=False, battery=40)
    body = protocol.checkin_body(
        build=build,
        power=power,
        network="wifi",
        sleeping=True,
        rtc_enabled=True,
        inventory_hash="h",
    )
    assert body["states"] == {"clientVersion": 1, "rtcEnabled": True, "state": "sleeping"}
    assert body["activity"] == "sleeping" and body["power"] == {"ac": False, "battery": 40}
    assert body["build"] == protocol.build_to_wire(build) and body["inventoryHash"] == "h"
    a, b = AppRecord(package_name="a", version_code=1), AppRecord(package_name="b", version_code=2)
    assert inventory_hash([a, b]) == inventory_hash([b, a]) != inventory_hash([a])


def test_checkin_bodies_share_no_dict() -> None:
    """The build's wire form is made once per distinct build, and each body gets its own copy:
    a caller that changes one body changes no other; a changed build is a new wire form."""
    build = BuildInfo(fingerprint="f", build_date=1)

    def body(build: BuildInfo) -> dict[str, Any]:
        power = PowerState(ac=True, battery=None)
        return protocol.checkin_body(
            build=build,
            power=power,
            network="ethernet",
            sleeping=False,
            rtc_enabled=False,
            inventory_hash=None,
        )

    first, second = body(build), body(BuildInfo(fingerprint="f", build_date=1))
    assert first == second and first["build"] is not second["build"]
    first["build"]["fingerprint"] = "changed"
    assert body(build)["build"]["fingerprint"] == "f" and "inventoryHash" not in second
    newer = body(BuildInfo(fingerprint="g", build_date=2))["build"]
    assert (newer["fingerprint"], newer["buildDate"]) == ("g", 2)
    for n in range(2 * protocol.BUILDS_KEPT):  # bounded: a fleet of distinct builds
        assert body(BuildInfo(fingerprint=f"b{n}"))["build"]["fingerprint"] == f"b{n}"
    assert len(protocol._BUILDS_ON_WIRE) <= protocol.BUILDS_KEPT


def test_splitmix64_matches_the_reference_and_replays() -> None:
    """SplitMix64 gives splitmix64.c's outputs for seed 1234567, replays from its seed, and
    draws floats in [0, 1), uniform values in range and ids of the bits asked for."""
    from agent.core.rng import SplitMix64

    rng = SplitMix64(1234567)
    assert [rng.next64() for _ in range(5)] == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]
    a, b = SplitMix64(9), SplitMix64(9)
    assert [a.getrandbits(128) for _ in range(3)] == [b.getrandbits(128) for _ in range(3)]
    draws = [a.random() for _ in range(10_000)]
    assert all(0.0 <= d < 1.0 for d in draws) and 0.45 < sum(draws) / len(draws) < 0.55
    assert all(2.0 <= a.uniform(2.0, 3.0) <= 3.0 for _ in range(100))
    assert all(0 <= a.getrandbits(k) < 2**k for k in (0, 1, 63, 64, 65, 128) for _ in range(50))
    assert not hasattr(a, "__dict__")  # one slot: what ten thousand agents can afford
