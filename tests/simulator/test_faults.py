"""Faults: the pure verdicts, and the transport that carries them out on a mock target."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from agent.clock import FakeClock, ScaledClock
from agent.core.rng import SplitMix64
from agent.errors import TransportError
from agent.protocol import Request, Response
from agent.runtime.artifacts import HashingSink
from agent.transport.base import Exchange
from agent.transport.mock import MockTransport
from simulator.faulty import FaultyTransport, JumpingClock
from simulator.plan.faults import (
    DOWNLOAD,
    PASS,
    Fault,
    FaultType,
    acting,
    clock_offset,
    error_body,
    verdict,
)


def always() -> float:
    return 0.0  # every probability draws


def never() -> float:
    return 0.999999


# -- pure ---------------------------------------------------------------------------------------


def test_a_fault_acts_in_its_window_on_its_kinds_and_endpoints_only() -> None:
    fault = Fault(
        type=FaultType.OUTAGE,
        start_s=10,
        end_s=20,
        kinds=frozenset({"kiosk"}),
        endpoints=frozenset({"checkin"}),
    )
    assert fault.hits("kiosk", "checkin", 10) and fault.hits("kiosk", "checkin", 19.9)
    assert not fault.hits("kiosk", "checkin", 20)  # the end is exclusive
    assert not fault.hits("kiosk", "checkin", 9.9)
    assert not fault.hits("tablet", "checkin", 15)
    assert not fault.hits("kiosk", "events", 15)
    assert acting([fault], "kiosk", "checkin", 15) == [fault]


def test_no_fault_passes_and_the_strongest_refusal_wins() -> None:
    assert verdict([], "checkin", always) is PASS and PASS.passes
    latency = Fault(type=FaultType.LATENCY, start_s=0, latency_s=2.0, jitter_s=1.0)
    outage = Fault(type=FaultType.OUTAGE, start_s=0)
    status = Fault(type=FaultType.STATUS, start_s=0, status=429, retry_after_s=5)
    got = verdict([latency, status, outage], "checkin", lambda: 0.5)
    assert got.refuse is not None and "outage" in got.refuse
    assert got.delay_s == pytest.approx(2.5)  # latencies still apply before the refusal
    answered = verdict([status], "checkin", always)
    assert (answered.status, answered.retry_after_s) == (429, 5)


def test_probability_is_drawn_from_the_devices_rng() -> None:
    drop = Fault(type=FaultType.DROP, start_s=0, probability=0.3)
    assert verdict([drop], "events", always).drop_answer == "connection dropped"
    assert verdict([drop], "events", never).passes
    rng = SplitMix64(7)
    hits = sum(verdict([drop], "events", rng.random).drop_answer is not None for _ in range(2000))
    assert 450 < hits < 750  # about 30 % of 2,000


def test_reset_loses_a_json_answer_and_cuts_a_download() -> None:
    reset = Fault(type=FaultType.RESET, start_s=0, at_fraction=0.5)
    truncate = Fault(type=FaultType.TRUNCATE, start_s=0, at_fraction=0.25)
    assert verdict([reset], "checkin", always).drop_answer == "connection reset"
    assert verdict([reset, truncate], DOWNLOAD, always).cut_at == 0.25
    assert verdict([truncate], "checkin", always).passes  # truncate is for downloads only


def test_bandwidth_is_for_downloads_and_the_narrowest_link_wins() -> None:
    slow = Fault(type=FaultType.BANDWIDTH, start_s=0, bytes_per_s=1000)
    slower = Fault(type=FaultType.BANDWIDTH, start_s=0, bytes_per_s=10)
    assert verdict([slow, slower], DOWNLOAD, always).bytes_per_s == 10
    assert verdict([slow], "checkin", always).passes


def test_clock_jumps_add_up_from_their_start() -> None:
    jumps = [
        Fault(type=FaultType.CLOCK_JUMP, start_s=10, jump_s=86400),
        Fault(type=FaultType.CLOCK_JUMP, start_s=20, jump_s=-3600, kinds=frozenset({"k"})),
    ]
    assert clock_offset(jumps, "k", 5) == 0
    assert clock_offset(jumps, "k", 10) == 86400
    assert clock_offset(jumps, "k", 25) == 86400 - 3600
    assert clock_offset(jumps, "other", 25) == 86400
    assert acting(jumps, "k", "checkin", 25) == []  # a jump is not a request fault


def test_the_fault_answer_is_the_error_envelope() -> None:
    body = json.loads(error_body(503, 2.0))
    assert (
        body["result"] is False and body["code"] == 50300 and "retry after 2 s" in body["message"]
    )
    assert json.loads(error_body(429, None))["code"] == 42900


def test_to_json_is_plain() -> None:
    fault = Fault(type=FaultType.LATENCY, start_s=1, latency_s=2)
    data = fault.to_json()
    assert data["end_s"] is None and data["type"] == "latency" and math.isfinite(data["start_s"])
    json.dumps(data)


# -- the transport --------------------------------------------------------------------------------

FILE = bytes(range(256)) * 40  # 10,240 bytes


async def target(request: Request) -> Response:
    """A target that answers every request, and serves FILE with Range."""
    if request.name != "download":
        return Response(status=200, body=b'{"result":true,"code":0,"data":{}}')
    ranged = request.headers.get("Range")
    if ranged:
        start = int(ranged.removeprefix("bytes=").split("-")[0])
        return Response(status=206, body=FILE[start:])
    return Response(status=200, body=FILE)


def faulty(
    *faults: Fault, clock: FakeClock | None = None
) -> tuple[FaultyTransport, list[Exchange]]:
    seen: list[Exchange] = []
    clock = clock or FakeClock()
    inner = MockTransport(target, clock=clock, observer=seen.append)
    transport = FaultyTransport(
        inner,
        kind="k",
        faults=faults,
        now_s=lambda: 0.0,
        clock=clock,
        rng=SplitMix64(1),
        observer=seen.append,
    )
    return transport, seen


CHECKIN = Request(method="POST", path="/ota/api/agent/checkin", name="checkin", body={})


async def test_an_outage_refuses_without_contacting_the_target_and_is_reported() -> None:
    transport, seen = faulty(Fault(type=FaultType.OUTAGE, start_s=0))
    with pytest.raises(TransportError, match="refused"):
        await transport.send(CHECKIN)
    assert isinstance(transport.inner, MockTransport) and transport.inner.sent == []
    assert [(e.name, e.status, e.error) for e in seen] == [("checkin", 0, "ConnectionRefused")]


async def test_a_status_burst_answers_the_envelope_with_retry_after() -> None:
    transport, seen = faulty(Fault(type=FaultType.STATUS, start_s=0, status=429, retry_after_s=3))
    answer = await transport.send(CHECKIN)
    assert answer.status == 429 and answer.headers["Retry-After"] == "3"
    assert json.loads(answer.body)["code"] == 42900
    assert [(e.name, e.status) for e in seen] == [("checkin", 429)]


async def test_a_dropped_answer_reached_the_target() -> None:
    transport, _ = faulty(Fault(type=FaultType.DROP, start_s=0))
    with pytest.raises(TransportError, match="dropped before the answer"):
        await transport.send(CHECKIN)
    assert isinstance(transport.inner, MockTransport) and len(transport.inner.sent) == 1


async def test_latency_waits_on_the_clock_before_sending() -> None:
    clock = FakeClock()
    clock.autojump_threshold = 0
    transport, _ = faulty(Fault(type=FaultType.LATENCY, start_s=0, latency_s=2.0), clock=clock)
    before = clock.monotonic()
    await transport.send(CHECKIN)
    assert clock.monotonic() - before == pytest.approx(2.0)


async def test_a_cut_download_keeps_the_first_part_and_resumes_with_range() -> None:
    transport, _ = faulty(Fault(type=FaultType.TRUNCATE, start_s=0, at_fraction=0.5))
    sink = HashingSink()
    with pytest.raises(TransportError, match=f"after {len(FILE) // 2} of {len(FILE)} bytes"):
        await transport.download_to("/f", {}, sink)
    assert sink.size == len(FILE) // 2
    result = await transport.download_to("/f", {}, sink)  # past the cut: this one goes through
    assert result.status == 206
    assert sink.size == len(FILE) and sink.sha256() == hashlib.sha256(FILE).hexdigest()
    assert isinstance(transport.inner, MockTransport)
    assert transport.inner.sent[-1].request.headers["Range"] == f"bytes={len(FILE) // 2}-"


async def test_bandwidth_makes_a_download_take_its_size_over_the_rate() -> None:
    clock = FakeClock()
    clock.autojump_threshold = 0
    transport, _ = faulty(Fault(type=FaultType.BANDWIDTH, start_s=0, bytes_per_s=1024), clock=clock)
    sink = HashingSink()
    before = clock.monotonic()
    await transport.download_to("/f", {}, sink)
    assert clock.monotonic() - before == pytest.approx(len(FILE) / 1024)


def test_a_jumping_clock_jumps_its_wall_time_at_the_faults_times_only() -> None:
    class Stopped(ScaledClock):
        def now_ms(self) -> int:
            return 1_000_000

        def monotonic(self) -> float:
            return 5.0

    base = Stopped(1.0)
    t = [0.0]
    jump = Fault(type=FaultType.CLOCK_JUMP, start_s=10, jump_s=86400, kinds=frozenset({"k"}))
    clock = JumpingClock(base, skew_s=-1.0, kind="k", faults=[jump], now_s=lambda: t[0])
    assert clock.now_ms() == 1_000_000 - 1000  # the skew alone
    t[0] = 10.0
    assert clock.now_ms() == 1_000_000 - 1000 + 86_400_000
    assert clock.monotonic() == 5.0 and clock.rate == 1.0
    other = JumpingClock(base, skew_s=0, kind="other", faults=[jump], now_s=lambda: t[0])
    assert other.now_ms() == 1_000_000


async def test_the_push_channel_is_refused_in_an_outage() -> None:
    transport, _ = faulty(Fault(type=FaultType.OUTAGE, start_s=0))
    with pytest.raises(TransportError, match="refused"):
        async with transport.open_push("/ota/api/agent/ws", {}):
            pass
