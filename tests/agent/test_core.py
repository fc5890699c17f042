"""Pure agent decisions: the enrollment flow never saves an existing device; backoff; check-in."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agent import protocol
from agent.core.backoff import next_delay, with_jitter
from agent.core.checkin import inventory_hash
from agent.core.enrollment import AdminLogin, enrollment
from agent.errors import ApiError, NotFound, ProtocolError, RateLimited, Unauthorized
from agent.models import AppRecord, BuildInfo, DeviceFacts, HardwareInfo, PowerState
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


def test_backoff_is_full_jitter_and_capped() -> None:
    """Delays stay within [0, min(cap, base*2^(n-1))] and vary between devices."""
    rng = random.Random(1)
    for attempt in range(1, 15):
        delay = next_delay(attempt, None, rng, base=1, cap=300)
        assert 0 <= delay <= min(300, 2 ** (attempt - 1))
    spread = {round(next_delay(5, None, random.Random(seed)), 3) for seed in range(20)}
    assert len(spread) > 10


def test_backoff_honours_retry_after_without_lockstep() -> None:
    """Retry-After is a floor; devices told the same value still spread out."""
    delays = [next_delay(1, 30, random.Random(seed)) for seed in range(50)]
    assert all(30 <= d <= 33 for d in delays) and len(set(delays)) > 40
    assert all(54 <= with_jitter(60, random.Random(s)) <= 66 for s in range(50))


def test_checkin_body_and_inventory_hash() -> None:
    """The body carries states, power, network, build; the hash ignores app order."""
    facts = DeviceFacts(
        hardware=HardwareInfo(serial_no="S1"),
        build=BuildInfo(fingerprint="f"),
        power=PowerState(ac=False, battery=40),
        network="wifi",
        sleeping=True,
    )
    body = protocol.checkin_body(facts, rtc_enabled=True, inventory_hash="h")
    assert body["states"] == {"clientVersion": 1, "rtcEnabled": True, "state": "sleeping"}
    assert body["activity"] == "sleeping" and body["power"] == {"ac": False, "battery": 40}
    assert body["build"]["fingerprint"] == "f" and body["inventoryHash"] == "h"
    a, b = AppRecord(package_name="a", version_code=1), AppRecord(package_name="b", version_code=2)
    assert inventory_hash([a, b]) == inventory_hash([b, a]) != inventory_hash([a])


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
