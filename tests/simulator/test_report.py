"""The report: §9 keys from the plan and the metrics, exact merging of shards, the summary table,
and report.html as one self-contained page that draws in a real headless Chromium."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agent.models import BuildInfo
from agent.transport.base import Exchange
from simulator import figures, report, report_html
from simulator.metrics import Metrics, MetricsSnapshot, Usage
from simulator.plan.model import (
    ActionKind,
    AdminAction,
    DeviceKind,
    Expectation,
    Plan,
    PlannedDevice,
)

EXPECTATIONS = (
    Expectation(name="checkin p99", expr='requests["checkin"].p99_ms < 50'),
    Expectation(name="errors", expr="errors.rate < 0.01"),
    Expectation(name="rollout", expr='convergence("rollout").t99_s < 120'),
    Expectation(name="consistent", expr="consistency.mismatches == 0"),
)


def plan(devices: int = 40) -> Plan:
    kind = DeviceKind(
        name="phone",
        manufacturer="Acme",
        brand="acme",
        model="A1",
        build=BuildInfo(fingerprint="acme/a1:14/1/1:user/release-keys", device_id="a1"),
    )
    return Plan(
        scenario="quickstart",
        scenario_sha256="ab" * 32,
        seed=7,
        duration_s=60.0,
        time_scale=1.0,
        kinds={"phone": kind},
        devices=tuple(
            PlannedDevice(index=i, serial=f"SIM{i:05d}", kind="phone", arrive_s=i / 10, seed=i)
            for i in range(devices)
        ),
        timeline=(
            AdminAction(at_s=5.0, action=ActionKind.SAVE_PROFILE, args={"name": "rollout"}),
            AdminAction(at_s=20.0, action=ActionKind.SAVE_PROFILE, args={"name": "wave-2"}),
        ),
        expectations=EXPECTATIONS,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_metrics(
    *, seed: int = 1, serials: range = range(40), lag_s: float = 0.0005, slow: bool = False
) -> Metrics:
    """A minute of a small fleet's traffic, profile events and probe samples (fake clock)."""
    rng = random.Random(seed)
    clock = Clock()
    m = Metrics(clock, origin=0.0, usage=lambda: Usage(cpu_s=0.0, rss_mb=90.0))
    for tenth in range(600):
        clock.now = tenth / 10
        m.websockets(min(len(serials), tenth // 10))
        for _ in range(rng.randrange(1, 6)):
            base = 0.2 if slow else 0.004
            duration = rng.expovariate(1 / base)
            status = 503 if rng.random() < 0.004 else 200
            name = rng.choice(["checkin", "checkin", "checkin", "ota_next", "events", "profiles"])
            m.observe(
                Exchange(
                    name=name,
                    intended=clock.now,
                    started=clock.now + rng.random() * 0.001,
                    duration=duration,
                    status=status,
                    error=None,
                )
            )
        m.record_send_lag(lag_s * rng.random() * 2)
        if tenth == 50:
            m.profile_saved("rollout", "u-rollout")
            m.observe(Exchange(name="admin:profile/save", intended=5, started=5, duration=0.02,
                               status=200, error=None))  # fmt: skip
        if tenth == 200:
            m.profile_saved("wave-2", "u-wave")
    for n, serial in enumerate(serials):
        device = f"SIM{serial:05d}"
        clock.now = 6 + n * 0.8 + rng.random()
        step = "deferred" if n % 7 == 0 else "installed"
        m.device_event(device, {"profileUuid": "u-rollout", "kind": "ota", "status": step})
        m.device_event(device, applied("u-rollout"))
        if n % 2 == 0:
            clock.now = 25 + n * 0.5
            m.device_event(device, applied("u-wave"))
    clock.now = 60.0
    return m


def applied(profile: str) -> dict[str, str]:
    return {"profileUuid": profile, "kind": "profile", "status": "applied"}


def build(snapshot: MetricsSnapshot, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "target": "http://127.0.0.1:40123",
        "started": "2026-01-02T03:04:05+00:00",
        "duration_s": 60.0,
        "devices": {"enrolled": 40, "failed": 0, "saved_twice": 0},
        "consistency": {"checked": 40, "mismatches": []},
        "server_status": {"rollout": {"scoped": 40, "applied": 40, "failed": 0}},
        "events": {"lost": 0, "duplicated": 0},
    }
    arguments.update(overrides)
    return report.build(plan(), snapshot, **arguments)


def test_the_report_has_the_schema_keys() -> None:
    """§9's keys, JSON values only, latencies per endpoint with the encoded histogram."""
    r = build(run_metrics().snapshot())
    for key in ("schema", "scenario", "seed", "shard", "versions", "target", "started",
                "duration_s", "devices", "requests", "timeline", "convergence", "expectations",
                "generator", "consistency"):  # fmt: skip
        assert key in r, key
    assert r["schema"] == "midm-sim-report/1"
    assert r["scenario"]["name"] == "quickstart"
    assert r["scenario"]["plan_hash"] == plan().plan_hash()
    assert r["scenario"]["plan"]["devices"][0][1] == "SIM00000"
    assert r["shard"] == {"index": 0, "count": 1}
    assert r["devices"]["planned"] == 40
    checkin = r["requests"]["checkin"]
    assert set(checkin) == {"count", "errors", "latency_ms", "hdr"}
    assert set(checkin["latency_ms"]) == {"p50", "p90", "p99", "p999", "max"}
    assert figures.decode(checkin["hdr"]).get_total_count() == checkin["count"]
    assert {"ota/next", "events", "profiles", "admin:profile/save"} <= set(r["requests"])
    assert set(r["timeline"][0]) == {"t", "rps", "errors", "p99_ms", "websockets"}
    assert [row["t"] for row in r["timeline"]] == list(range(60))  # t=60: after the end
    rollout = r["convergence"]["rollout"]
    assert (rollout["scoped"], rollout["applied"], rollout["deferred"]) == (40, 40, 6)
    assert rollout["curve"][0] == [0.0, 0.0]
    assert rollout["curve"][-1][1] == 1.0
    assert rollout["server"] == {"scoped": 40, "applied": 40, "failed": 0}
    assert r["convergence"]["wave-2"]["scoped"] == 20  # no server status: devices reporting
    assert set(r["generator"]) >= {"cpu_s", "rss_mb", "send_lag_ms", "saturated"}
    assert set(r["generator"]["send_lag_ms"]) == {"p50", "p99", "max"}
    assert r["consistency"] == {"checked": 40, "mismatches": []}
    assert [e["name"] for e in r["expectations"]] == [e.name for e in EXPECTATIONS]
    assert all(e["passed"] for e in r["expectations"]), r["expectations"]
    assert r["warnings"] == []
    assert json.loads(json.dumps(r)) == r


def test_convergence_is_measured_from_each_profiles_save() -> None:
    """t-values are seconds after the save: devices applied 1-33 s after a save at t=5."""
    c = build(run_metrics().snapshot())["convergence"]["rollout"]
    assert c["saved_at_s"] == 5.0
    assert 0 < c["t50_s"] < c["t90_s"] <= c["t99_s"] < 40


def test_a_saturated_generator_says_its_latencies_are_not_trustworthy() -> None:
    """Send-lag p99 above 10 ms: `saturated`, a warning, a banner, and the summary says so."""
    r = build(run_metrics(lag_s=0.04).snapshot())
    assert r["generator"]["saturated"] is True
    assert any(report.UNTRUSTWORTHY in w for w in r["warnings"])
    assert 'id="saturated"' in report_html.render(r)
    console = Console(record=True, width=160)
    report.print_summary(r, console)
    assert "not trustworthy" in console.export_text()


def test_failed_expectations_are_reported_with_what_was_observed() -> None:
    r = build(
        run_metrics(slow=True).snapshot(),
        consistency={
            "checked": 40,
            "mismatches": [{"serial": "SIM00001", "field": "build", "device": "a", "server": "b"}],
        },
    )
    by_name = {e["name"]: e for e in r["expectations"]}
    assert by_name["checkin p99"]["passed"] is False
    assert by_name["checkin p99"]["observed"] > 50
    assert by_name["consistent"] == {
        "name": "consistent",
        "expr": "consistency.mismatches == 0",
        "passed": False,
        "observed": 1,
    }
    console = Console(record=True, width=200)
    report.print_summary(r, console)
    text = console.export_text()
    assert "FAIL" in text and "PASS" in text
    assert "checkin" in text and "ota/next" in text and "rollout" in text


def test_shard_reports_merge_exactly() -> None:
    """Two shards' reports merge into the figures one collector of everything would give."""
    first = build(run_metrics(seed=1, serials=range(20)).snapshot(), shard=(0, 2))
    second = build(run_metrics(seed=2, serials=range(20, 40)).snapshot(), shard=(1, 2))
    merged = report.merge([first, second])
    for key in ("checkin", "events"):
        both = figures.merged([first["requests"][key]["hdr"], second["requests"][key]["hdr"]])
        assert merged["requests"][key]["count"] == both.get_total_count()
        assert merged["requests"][key]["latency_ms"] == figures.latency_ms(both)
        assert merged["requests"][key]["count"] == (
            first["requests"][key]["count"] + second["requests"][key]["count"]
        )
    assert (
        merged["timeline"][10]["rps"]
        == first["timeline"][10]["rps"] + (second["timeline"][10]["rps"])
    )
    assert merged["devices"]["enrolled"] == 80
    assert merged["convergence"]["rollout"]["applied"] == 40
    assert merged["shard"]["count"] == 2
    assert [e["name"] for e in merged["expectations"]] == [e.name for e in EXPECTATIONS]
    other = dict(second, seed=8)
    with pytest.raises(report.ReportError, match="different runs"):
        report.merge([first, other])
    with pytest.raises(report.ReportError, match="snapshot"):
        report.merge([{"scenario": {}}])


def test_write_and_read_back(tmp_path: Path) -> None:
    r = build(run_metrics().snapshot())
    json_path, html_path = report.write(tmp_path / "out", r)
    assert json.loads(json_path.read_text()) == r
    assert report.read(tmp_path / "out") == r
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(report.ReportError, match="not a midm-sim-report/1"):
        report.read(tmp_path / "bad.json")


def test_the_page_is_self_contained_and_escapes_what_it_embeds() -> None:
    """No URL but the SVG namespace, no external resource, no way out of the data script."""
    r = build(run_metrics().snapshot())
    r["consistency"]["mismatches"] = [
        {"serial": "</script><script>alert(1)</script>", "field": "x", "device": 1, "server": 2}
    ]
    page = report_html.render(r)
    urls = set(re.findall(r"https?://[^\s\"']+", page))
    assert urls == {"http://www.w3.org/2000/svg", r["target"]}  # the target is shown as text
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", page)
    assert page.count("</script>") == page.count("<script")
    data = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["consistency"]["mismatches"][0]["serial"].startswith("</script>")
    assert "hdr" not in json.loads(data)["requests"]["checkin"]


# --- in a real browser ------------------------------------------------------------------------


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    assert binary is not None
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-default-apps",
            "--disable-extensions",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


needs_chromium = pytest.mark.skipif(
    chromium() is None and os.environ.get("CI") != "true",
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it on CI)",
)


@needs_chromium
@pytest.mark.parametrize("saturated", [False, True])
def test_the_page_draws_in_headless_chromium(tmp_path: Path, saturated: bool) -> None:
    """Chromium opens report.html from disk: every chart drew, no script or console error; a
    screenshot is kept next to it."""
    assert chromium() is not None, "CI=true: chromium must be installed (.ci/run installs it)"
    r = build(run_metrics(lag_s=0.04 if saturated else 0.0005).snapshot())
    r["fleet"] = {  # what the runner adds beside §9's keys
        "start_lag_ms": {"p50": 0.1, "p99": 0.5, "max": 0.9},
        "checkins": 900,
        "agent_errors": [{"serial": "SIM00003", "error": "boom"}],
    }
    r["admin_timeline"] = [
        {
            "at_s": 5.0,
            "action": "save_profile",
            "name": "rollout",
            "started_s": 5.01,
            "error": None,
        },
        {"at_s": 9.0, "action": "edit_profile", "name": "x", "started_s": 9.0, "error": "40900"},
    ]
    _, html_path = report.write(tmp_path / "report", r)
    dom = browse(html_path, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="charts-drawn"' in dom.stdout, dom.stderr[-2000:]
    assert 'class="js-error"' not in dom.stdout, dom.stdout.split('class="js-error"')[1][:500]
    assert 'data-charts="5"' in dom.stdout
    assert ("SATURATED" in dom.stdout) is saturated
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "rror" in line or "Uncaught" in line], console
    assert dom.stdout.count("<svg") == 5
    assert "began at 5.010 s" in dom.stdout and "edit_profile x (began at 9 s): 40900" in dom.stdout
    assert dom.stdout.count("<path") > 10  # lines and axes were drawn
    assert "<rect" in dom.stdout  # the latency bars
    shot = tmp_path / "report" / "report.png"
    result = browse(
        html_path, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,3000"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a page with charts, not a blank one
