"""Shards: which devices each shard runs (pure, deterministic from the plan), the rendezvous
marker, which reports may be merged (one plan, one run, each shard once) and the one-line
exit-2 errors of bad shard settings and mismatched reports."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator import report, runner, shards
from simulator.admin import AdminRefused, AdminUnauthorized
from simulator.errors import SettingsError
from simulator.plan.expand import expand
from simulator.plan.model import ActionKind, AdminAction
from simulator.plan.shards import (
    Shard,
    ShardError,
    parse_shard,
    resaved,
    select,
    serials_digest,
    shard_plan,
)
from simulator.scenario import load
from simulator.shards import Source, Start
from tests.simulator.test_report import build, plan, run_metrics

SIM = Path(sys.executable).parent / "midm-sim"
ROOT = Path(__file__).resolve().parents[2]
CREDS = ("--api-key", "k", "--admin-email", "a@b.test", "--admin-password", "p")


def sim(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIM), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("midm-sim"), text
    return lines[0]


# -- shard specs and selection -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "index", "count"), [("0/1", 0, 1), ("0/3", 0, 3), ("2/3", 2, 3), ("9/10", 9, 10)]
)
def test_a_shard_is_i_of_n(text: str, index: int, count: int) -> None:
    shard = parse_shard(text)
    assert (shard.index, shard.count) == (index, count)
    assert str(shard) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("3/3", "the index must be 0 to 2"),
        ("1/0", "the shard count must be at least 1"),
        ("-1/3", "is not I/N"),
        ("1", "is not I/N"),
        ("1/3/4", "is not I/N"),
        ("a/3", "is not I/N"),
        (" 1/3", "is not I/N"),
        ("١/٣", "is not I/N"),  # Arabic-Indic digits are digits to str.isdigit, not to us
    ],
)
def test_a_bad_shard_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ShardError, match=says):
        parse_shard(text)


@given(devices=st.integers(0, 300), count=st.integers(1, 12))
def test_shards_partition_the_fleet_evenly_in_arrival_order(devices: int, count: int) -> None:
    """Every planned device is in exactly one shard; shard sizes differ by at most one; each
    shard keeps the plan's (arrival) order."""
    p = plan(devices)
    parts = [select(p, Shard(index=i, count=count)) for i in range(count)]
    serials = [d.serial for part in parts for d in part]
    assert sorted(serials) == sorted(d.serial for d in p.devices)
    assert len(set(serials)) == len(serials)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    order = {d.serial: n for n, d in enumerate(p.devices)}
    for part in parts:
        assert [order[d.serial] for d in part] == sorted(order[d.serial] for d in part)


def test_the_same_seed_gives_every_shard_the_same_devices_and_one_plan_hash() -> None:
    """Shards expand the whole plan (one hash) and take device i when i mod N is their index;
    a second expansion picks the same serials, another seed other devices' seeds."""
    scenario = load(ROOT / "scenarios" / "quickstart.toml")
    first, again = expand(scenario, 5, devices=100), expand(scenario, 5, devices=100)
    assert first.plan_hash() == again.plan_hash()
    for index in range(3):
        shard = Shard(index=index, count=3)
        mine = shard_plan(first, shard)
        assert mine.devices == shard_plan(again, shard).devices
        assert all(d.index % 3 == index for d in mine.devices)
        assert mine.kinds == first.kinds and mine.timeline == first.timeline
        assert serials_digest(mine.devices) == serials_digest(select(again, shard))
    assert shard_plan(first, Shard()) is first
    other = expand(scenario, 6, devices=100)
    assert [d.seed for d in other.devices] != [d.seed for d in first.devices]


def test_a_shard_settles_the_devices_the_timeline_resaved_by_then() -> None:
    p = plan(6)
    timeline = (
        AdminAction(at_s=5, action=ActionKind.RESAVE_DEVICES, args={"serials": ("SIM00001",)}),
        AdminAction(at_s=9, action=ActionKind.RESAVE_DEVICES, args={"serials": ("SIM00004",)}),
    )
    p = dataclasses.replace(p, timeline=timeline)
    mine = {"SIM00001", "SIM00004"}
    assert resaved(p, mine, 4.9) == set()
    assert resaved(p, mine, 5.0) == {"SIM00001"}
    assert resaved(p, mine, 60) == mine
    assert resaved(p, {"SIM00002"}, 60) == set()


# -- the rendezvous marker -----------------------------------------------------------------------


def test_the_marker_names_the_run_and_its_t0() -> None:
    start = Start(t0_ms=1_790_000_000_123, clock_ms=1_790_000_004_000)
    name = shards.marker_name("run-7", start)
    assert shards.parse_marker(name, "run-7") == start
    assert shards.parse_marker(name, "run-8") is None
    assert shards.parse_marker("stores", "run-7") is None
    later = Start(t0_ms=start.t0_ms + 5, clock_ms=start.clock_ms)
    groups: list[dict[str, Any]] = [
        {"profile": {"name": "stores"}},
        {"profile": {"name": shards.marker_name("other", later)}},
        {"profile": {"name": name}},
        {"profile": {"name": shards.marker_name("run-7", later)}},  # shard 0 started again
        {"profile": None},
    ]
    assert shards.latest_start(groups, "run-7") == later
    assert shards.latest_start(groups[:1], "run-7") is None


@pytest.mark.parametrize("run_id", ["a", "8f14e45f-ceea-467f-a8e9-1e3e5c8f2b1d", "run_1.x"])
def test_run_ids(run_id: str) -> None:
    assert shards.check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["", "-x", "a b", "x" * 65, "r/1"])
def test_bad_run_ids(run_id: str) -> None:
    with pytest.raises(SettingsError, match="--run-id"):
        shards.check_run_id(run_id)


# -- which reports merge --------------------------------------------------------------------------


def shard_report(index: int, count: int, *, run_id: str | None = "run-1", **kw: Any) -> Any:
    info = {"run_id": run_id} if run_id is not None else None
    serials = range(index * 10, index * 10 + 10)
    return build(
        run_metrics(seed=index + 1, serials=serials).snapshot(),
        shard=(index, count),
        shard_info=info,
        judge=count == 1,
        **kw,
    )


def sources(*reports: Any) -> list[Source]:
    return [Source(path=Path(f"r{n}"), report=r) for n, r in enumerate(reports)]


def test_the_shards_of_one_run_merge() -> None:
    """Each index once, one run id: no warning; the merged report says the run and checks the
    expectations the shards did not."""
    parts = [shard_report(i, 3) for i in range(3)]
    assert all(p["expectations"] == [] for p in parts)
    verdict = shards.check(sources(*parts))
    assert verdict == shards.Verdict()
    merged = report.merge(parts, warnings=verdict.warnings)
    assert merged["shard"]["count"] == 3
    assert merged["shard"]["run_id"] == "run-1"
    assert [s["index"] for s in merged["shard"]["merged"]] == [0, 1, 2]
    assert len(merged["expectations"]) == len(plan().expectations)
    assert merged["partial"] is False


def test_reports_of_different_plans_are_refused_naming_both_hashes() -> None:
    first = shard_report(0, 2)
    other = shard_report(1, 2)
    other["scenario"] = {**other["scenario"], "plan_hash": "f" * 64}
    with pytest.raises(report.ReportError) as caught:
        shards.check(sources(first, other))
    text = str(caught.value)
    assert "r0 and r1 are reports of different runs" in text
    assert first["scenario"]["plan_hash"][:12] in text and "ffffffffffff" in text


def test_a_shard_given_twice_is_refused_naming_both_files() -> None:
    with pytest.raises(report.ReportError, match="shard 1/3 is given twice: r1 and r2"):
        shards.check(sources(shard_report(0, 3), shard_report(1, 3), shard_report(1, 3)))
    same = shard_report(0, 1)
    with pytest.raises(report.ReportError, match="is given twice"):
        shards.check([Source(path=Path("a"), report=same), Source(path=Path("a"), report=same)])


def test_a_missing_shard_is_refused_unless_allowed_then_the_merge_is_partial() -> None:
    parts = sources(shard_report(0, 3), shard_report(2, 3))
    with pytest.raises(report.ReportError, match=r"shard 1/3 is missing \(give --allow-missing"):
        shards.check(parts)
    verdict = shards.check(parts, allow_missing=True)
    assert verdict.missing == (1,)
    merged = report.merge([s.report for s in parts], **vars_of(verdict))
    assert merged["partial"] is True
    assert merged["shard"]["missing"] == [1]
    assert "shard 1/3 is missing: the figures are partial" in merged["warnings"]


def vars_of(verdict: shards.Verdict) -> dict[str, Any]:
    return {"warnings": verdict.warnings, "missing": verdict.missing}


def test_shards_of_two_runs_or_two_splits_or_a_merged_report_are_refused() -> None:
    with pytest.raises(report.ReportError, match=r"shards of different runs \(run id run-1 vs x\)"):
        shards.check(sources(shard_report(0, 2), shard_report(1, 2, run_id="x")))
    with pytest.raises(report.ReportError, match="different splits"):
        shards.check(sources(shard_report(0, 2), shard_report(1, 3)))
    with pytest.raises(report.ReportError, match="different splits"):
        shards.check(sources(shard_report(0, 1), shard_report(1, 2)))
    merged = report.merge([shard_report(0, 2), shard_report(1, 2)])
    with pytest.raises(report.ReportError, match="r0 is a merged report"):
        shards.check(sources(merged))


def test_whole_runs_of_one_plan_are_added_together_with_a_warning() -> None:
    verdict = shards.check(sources(shard_report(0, 1), shard_report(0, 1)))
    assert verdict.warnings == ("2 whole runs of one plan added together",)


def test_the_merge_adds_what_the_runner_adds_beside_the_report() -> None:
    """The fleet's counts summed, the collector's pauses (counts summed, the longest pause),
    the admin timeline and the embedded server's CPU from whichever shard has them."""
    parts = [shard_report(i, 2) for i in range(2)]
    for n, part in enumerate(parts):
        part["fleet"] = {
            "start_lag_ms": {"p50": 1.0 + n, "p99": 5.0, "max": 9.0 * (n + 1)},
            "checkins": 100,
            "checkin_failures": n,
            "agent_errors": [{"serial": f"S{n}", "error": "x"}],
            "consistency_settled": 2,
        }
        part["generator"]["gc"] = {
            "freezes": 3,
            "collections": [10, 2, n],
            "max_pause_ms": [1.0, 2.0 + n, 0.5],
            "frozen_objects": 1000,
        }
    parts[0]["admin_timeline"] = [{"at_s": 5.0, "action": "save_profile", "name": "rollout"}]
    parts[1]["admin_timeline"] = []
    merged = report.merge(parts)
    fleet = merged["fleet"]
    assert (fleet["checkins"], fleet["checkin_failures"], fleet["consistency_settled"]) == (
        200,
        1,
        4,
    )
    assert fleet["start_lag_ms"] == {"p50": 2.0, "p99": 5.0, "max": 18.0}
    assert [e["serial"] for e in fleet["agent_errors"]] == ["S0", "S1"]
    gc = merged["generator"]["gc"]
    assert gc == {
        "freezes": 6,
        "collections": [20, 4, 1],
        "max_pause_ms": [1.0, 3.0, 0.5],
        "frozen_objects": 2000,
    }
    assert merged["admin_timeline"] == parts[0]["admin_timeline"]
    assert list(merged)[-1] == "snapshot"


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--shard", "3/3"), "argument --shard: 3/3: the index must be 0 to 2"),
        (("--shard", "x"), "argument --shard: 'x' is not I/N"),
        (("--shard", "1/3"), "--shard 1/3 needs --target"),
        (("--shard", "1/3", "--target", "http://127.0.0.1:9", *CREDS), "needs --run-id"),
        (("--shard", "0/2", "--shard-from-env"), "--shard or --shard-from-env, not both"),
        (("--shard-from-env",), "JOB_COMPLETION_INDEX and MIDM_SIM_SHARDS not set"),
        (("--workers", "2", "--shard", "1/2"), "--workers with --shard 1/2: not supported"),
        (("--run-id", "a b"), "--run-id 'a b': use 1 to 64 letters"),
        (("--workers", "0"), "argument --workers: 0 must be positive"),
    ],
)
def test_bad_shard_settings_are_exit_2_in_one_line(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    done = sim("run", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in one_line(done.stderr)
    assert not (tmp_path / "sim-report").exists()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"JOB_COMPLETION_INDEX": "0"}, "MIDM_SIM_SHARDS not set"),
        ({"JOB_COMPLETION_INDEX": "3", "MIDM_SIM_SHARDS": "3"}, "the index must be 0 to 2"),
        ({"JOB_COMPLETION_INDEX": "x", "MIDM_SIM_SHARDS": "3"}, "is not I/N"),
    ],
)
def test_a_bad_shard_from_the_environment_is_exit_2(
    env: dict[str, str], says: str, tmp_path: Path
) -> None:
    done = sim("run", "--shard-from-env", cwd=tmp_path, env={**os.environ, **env})
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "--shard-from-env" in line and says in line


def write_reports(folder: Path, *reports: Any) -> list[Path]:
    paths = []
    for n, r in enumerate(reports):
        path = folder / f"r{n}"
        report.write(path, r)
        paths.append(path)
    return paths


def test_merge_of_mismatched_reports_is_exit_2_naming_them(tmp_path: Path) -> None:
    other = shard_report(1, 2)
    other["scenario"] = {**other["scenario"], "plan_hash": "e" * 64}
    a, b = write_reports(tmp_path, shard_report(0, 2), other)
    done = sim("merge", a, b, "--report", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"{a} and {b} are reports of different runs" in line and "eeeeeeeeeeee" in line
    assert not (tmp_path / "out").exists()


def test_merge_of_a_run_folder_reads_its_shards_and_refuses_a_missing_one(
    tmp_path: Path,
) -> None:
    """`merge DIR` takes DIR/shard-*/report.json; a missing shard is exit 2 unless
    --allow-missing, which writes a partial report (exit as its expectations say)."""
    run = tmp_path / "run"
    for index in (0, 2):
        report.write(shards.shard_folder(run, Shard(index=index, count=3)), shard_report(index, 3))
    done = sim("merge", run, "--report", run, cwd=tmp_path)
    assert done.returncode == 2
    assert "shard 1/3 is missing" in one_line(done.stderr)
    assert not (run / "report.json").exists()
    allowed = sim("merge", run, "--report", run, "--allow-missing", cwd=tmp_path)
    assert allowed.returncode in (0, 1), allowed.stderr
    merged = json.loads((run / "report.json").read_text())
    assert merged["partial"] is True and merged["shard"]["missing"] == [1]
    again = sim("merge", run, "--report", tmp_path / "again", "--allow-missing", cwd=tmp_path)
    assert again.returncode == allowed.returncode  # the shards win over the merged report


class _Admin:
    """An admin client whose login the target answers 503 `busy` times first."""

    base_url = "http://127.0.0.1:9"

    def __init__(self, busy: int, status: int = 503) -> None:
        self.busy, self.status, self.logins, self.closed = busy, status, 0, 0

    async def __aenter__(self) -> _Admin:
        self.logins += 1
        if self.logins <= self.busy:
            error = AdminUnauthorized if self.status == 401 else AdminRefused
            raise error("/portal/V1/auth", code=0, status=self.status, message="no")
        return self

    async def close(self) -> None:
        self.closed += 1


async def test_a_busy_login_is_tried_again_a_refused_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every shard logs in at once: 429/503 (the server's login queue is full) is tried again
    (LOGIN_ATTEMPTS in all); another refusal is not; a wrong password is exit 2."""
    monkeypatch.setattr(runner, "LOGIN_RETRY_S", 0.0)
    rng = random.Random(1)
    busy = _Admin(busy=runner.LOGIN_ATTEMPTS - 1)
    async with runner._AdminLogin(busy, rng=rng) as admin:  # type: ignore[arg-type]
        assert admin is busy  # type: ignore[comparison-overlap]
    assert (busy.logins, busy.closed) == (runner.LOGIN_ATTEMPTS, 1)
    hopeless = _Admin(busy=runner.LOGIN_ATTEMPTS)
    with pytest.raises(AdminRefused):
        await runner._AdminLogin(hopeless, rng=rng).__aenter__()  # type: ignore[arg-type]
    assert hopeless.logins == runner.LOGIN_ATTEMPTS
    refused = _Admin(busy=1, status=400)
    with pytest.raises(AdminRefused):
        await runner._AdminLogin(refused, rng=rng).__aenter__()  # type: ignore[arg-type]
    assert refused.logins == 1
    wrong = _Admin(busy=1, status=401)
    with pytest.raises(SettingsError, match="refused the admin login"):
        await runner._AdminLogin(wrong, rng=rng).__aenter__()  # type: ignore[arg-type]
