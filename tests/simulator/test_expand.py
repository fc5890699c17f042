"""expand(): a pure, deterministic plan: same scenario and seed, same plan and plan_hash."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.plan.expand import SplitMix64, arrivals, expand, quotas, time_of
from simulator.plan.model import ActionKind
from simulator.plan.render import render
from simulator.plan.spec import ArrivalProcess, ArrivalSpec, Phase, Scenario
from simulator.scenario import load, parse

SCENARIOS = Path(__file__).parent.parent.parent / "scenarios"

FLEET = """\
[scenario]
duration_s = 100
devices = 50

[kinds.a]
count = 10
model = "A"

[kinds.b]
share = 0.75
model = "B"

[kinds.c]
share = 0.25
model = "C"

[arrival]
process = "even"
rate = 10

[[timeline]]
at_s = 2
action = "resave_devices"
kind = "b"
count = 3

[[timeline]]
at_s = 50
action = "resave_devices"
share = 0.1
serials = ["SIM-000001", "NOT-PLANNED"]
"""


def fleet() -> Scenario:
    return parse(FLEET.encode(), file="fleet.toml")


def test_the_same_scenario_and_seed_give_the_same_plan_and_hash() -> None:
    """Two expansions (of two parses of the file) are equal, down to the hash."""
    first = load(SCENARIOS / "quickstart.toml")
    second = load(SCENARIOS / "quickstart.toml")
    a, b = expand(first, 42), expand(second, 42)
    assert a == b
    assert a.plan_hash() == b.plan_hash()
    assert render(a) == render(b)


def test_another_seed_gives_another_plan() -> None:
    scenario = load(SCENARIOS / "quickstart.toml")
    a, b = expand(scenario, 1), expand(scenario, 2)
    assert a.plan_hash() != b.plan_hash()
    assert [d.arrive_s for d in a.devices] != [d.arrive_s for d in b.devices]
    assert [d.seed for d in a.devices] != [d.seed for d in b.devices]


def test_the_plan_hash_is_pinned() -> None:
    """SplitMix64 and the arrival maths give the same plan on every platform and Python: a
    changed hash here means replays of recorded runs changed too."""
    plan = expand(fleet(), 7)
    assert plan.devices[0].seed == SplitMix64(7 ^ 0x6A09E667F3BCC909).next64()
    assert SplitMix64(0).next64() == 0xE220A8397B1DCDAF  # the reference SplitMix64 output
    assert plan.plan_hash() == expand(fleet(), 7).plan_hash()


def test_to_json_is_json_and_the_hash_is_its_canonical_sha256() -> None:
    plan = expand(load(SCENARIOS / "push-fleet.toml"), 3)
    document = plan.to_json()
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    assert plan.plan_hash() == hashlib.sha256(text.encode()).hexdigest()
    assert document["devices"][0] == [
        0, plan.devices[0].serial, plan.devices[0].kind, plan.devices[0].arrive_s,
        plan.devices[0].seed,
    ]  # fmt: skip
    assert {a["action"] for a in document["timeline"]} >= {"save_profile", "edit_profile"}
    assert document["kinds"]["handheld"]["sleep"] == [[0.0, 3600.0]]


def test_kinds_get_counts_then_shares_of_the_rest() -> None:
    plan = expand(fleet(), 1)
    kinds = [d.kind for d in plan.devices]
    assert (kinds.count("a"), kinds.count("b"), kinds.count("c")) == (10, 30, 10)
    assert len({d.serial for d in plan.devices}) == 50
    assert [d.index for d in plan.devices] == list(range(50))
    assert plan.devices[7].serial == "SIM-000007"
    assert kinds[:10] != ["a"] * 10  # dealt by a seeded shuffle, not in blocks


def test_devices_override_keeps_the_proportions_and_each_device_keeps_its_seed() -> None:
    small, large = expand(fleet(), 5, devices=10), expand(fleet(), 5, devices=1000)
    assert len(small.devices) == 10 and len(large.devices) == 1000
    kinds = [d.kind for d in large.devices]
    assert (kinds.count("a"), kinds.count("b"), kinds.count("c")) == (200, 600, 200)
    assert [d.seed for d in small.devices] == [d.seed for d in large.devices[:10]]


def test_duration_and_time_scale_override() -> None:
    plan = expand(fleet(), 1, duration=12.5, time_scale=4.0)
    assert (plan.duration_s, plan.time_scale) == (12.5, 4.0)
    assert expand(fleet(), 1).duration_s == 100


@pytest.mark.parametrize(
    ("weights", "total", "expected"),
    [
        ([1, 1, 1], 10, [4, 3, 3]),
        ([0.5, 0.5], 3, [2, 1]),
        ([2, 1], 0, [0, 0]),
        ([0, 1], 5, [0, 5]),
        ([0.7, 0.3], 1000, [700, 300]),
    ],
)
def test_quotas_split_by_largest_remainder(
    weights: list[float], total: int, expected: list[int]
) -> None:
    assert quotas(weights, total) == expected


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1), st.integers(0, 10_000))
def test_quotas_always_add_up(weights: list[int], total: int) -> None:
    counts = quotas(weights, total)
    assert sum(counts) == (total if sum(weights) else 0)
    assert all(c >= 0 for c in counts)


def test_even_arrivals_follow_the_rate_and_its_ramp() -> None:
    """At a constant rate r, device i is due at i/r; over a linear ramp from 0 to r in R
    seconds, r*R/2 devices arrive, the k-th at R*sqrt(k/(r*R/2))."""
    steady = ArrivalSpec(
        process=ArrivalProcess.EVEN,
        start_s=1.0,
        phases=(Phase(duration_s=0, rate_from=4, rate_to=4),),
    )
    assert arrivals(steady, 5, 0) == [1.0, 1.25, 1.5, 1.75, 2.0]
    ramp = ArrivalSpec(
        process=ArrivalProcess.EVEN,
        start_s=0.0,
        phases=(Phase(duration_s=10, rate_from=0, rate_to=20),),
    )
    times = arrivals(ramp, 200, 0)
    assert times[100] == pytest.approx(10 * math.sqrt(100 / 100), abs=1e-6)
    assert times[25] == pytest.approx(10 * math.sqrt(25 / 100), abs=1e-6)
    assert times[150] == pytest.approx(10 + 50 / 20, abs=1e-6)  # the last rate holds


def test_poisson_arrivals_keep_the_rate_on_average() -> None:
    spec = ArrivalSpec(
        process=ArrivalProcess.POISSON,
        start_s=0.0,
        phases=(Phase(duration_s=0, rate_from=100, rate_to=100),),
    )
    times = arrivals(spec, 5000, 9)
    assert times == sorted(times)
    assert times[-1] == pytest.approx(50, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) > 5 * 0.01  # exponential gaps, not even ones


@given(
    st.lists(
        st.tuples(
            st.one_of(st.just(0.0), st.floats(0.001, 100)), st.floats(0, 500), st.floats(0, 500)
        ),
        min_size=1,
        max_size=4,
    ),
    st.floats(0.1, 500),
    st.floats(0, 10_000),
)
def test_time_of_inverts_the_expected_arrivals(
    phases: list[tuple[float, float, float]], last_rate: float, expected: float
) -> None:
    """time_of(n) is where the integral of the rate reaches n, and never runs backwards."""
    spec = ArrivalSpec(
        process=ArrivalProcess.EVEN,
        start_s=0.0,
        phases=(
            *(Phase(duration_s=d, rate_from=a, rate_to=b) for d, a, b in phases),
            Phase(duration_s=0, rate_from=last_rate, rate_to=last_rate),
        ),
    )
    t = time_of(spec, expected)
    assert math.isfinite(t)
    assert time_of(spec, expected + 1) >= t
    assert _integral(spec, t) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def _integral(spec: ArrivalSpec, t: float) -> float:
    total, start = 0.0, spec.start_s
    rate = 0.0
    for phase in spec.phases:
        d = phase.duration_s
        rate = phase.rate_to
        if d <= 0:
            continue
        x = min(max(t - start, 0.0), d)
        total += phase.rate_from * x + (phase.rate_to - phase.rate_from) / (2 * d) * x * x
        start += d
    return total + rate * max(t - start, 0.0)


def test_resave_selections_become_serials_of_devices_arrived_by_then() -> None:
    plan = expand(fleet(), 3)
    first, second = plan.timeline
    assert first.action is ActionKind.RESAVE_DEVICES
    chosen = [d for d in plan.devices if d.serial in first.args["serials"]]
    assert len(chosen) == 3
    assert all(d.kind == "b" and d.arrive_s <= 2 for d in chosen)
    assert second.args["serials"][0] == "SIM-000001"  # given serials first, unplanned dropped
    assert "NOT-PLANNED" not in second.args["serials"]
    assert len(second.args["serials"]) == 1 + 5 - ("SIM-000001" in second.args["serials"][1:])
    assert expand(fleet(), 3).timeline == plan.timeline
    assert expand(fleet(), 4).timeline != plan.timeline


def test_render_shows_the_fleet_the_timeline_and_the_hash() -> None:
    plan = expand(load(SCENARIOS / "quickstart.toml"), 1)
    text = render(plan)
    assert "fleet: 1,000 devices" in text
    assert "save_profile    rollout (groups stores; install kiosk-2)" in text
    assert "create_group    stores-north (child of stores)" in text
    assert text.rstrip().endswith(plan.plan_hash())
