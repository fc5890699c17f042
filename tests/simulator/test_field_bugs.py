"""Field bugs (issue 14): the herd figure, duplicate serials found at plan time, the embedded
server's restart (the timeline's `restart_server`), and every field-bug scenario the project
ships, run scaled down through the CLI against the embedded server.

The scenario runs start together when the module's first test asks for them (each is a small
fleet whose time is mostly scenario time: they share the machine well), and each test then
waits for its own run and checks its exit code and headline figures. Every field bug these
scenarios found is fixed (their headers say what it was and where it was fixed): each run must
exit 0 with every expectation met.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from simulator import report
from simulator.admin import AdminClient
from simulator.embedded import embedded_server, process_cpu_s
from simulator.herd import herd
from simulator.metrics import Metrics, Usage
from simulator.plan import serials
from simulator.plan.expand import expand
from simulator.plan.model import ActionKind
from simulator.plan.render import render
from simulator.scenario import ScenarioError, load, parse
from simulator.timeline import ActionResult, Timeline
from tests.helpers import Server

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
SIM = Path(sys.executable).parent / "midm-sim"
RUN_TIMEOUT_S = 110
NOTHING_LOST = "events.lost == 0 and events.duplicated == 0"


# -- the herd figure (pure) ---------------------------------------------------------------------


def herd_plan(*, start: float = 100, end: float = 160, duration: float = 230) -> dict[str, Any]:
    """report.json's scenario.plan, as much of it as herd() reads: 60 s check-ins, the last
    device arriving at 10 s, one outage."""
    return {
        "duration_s": duration,
        "kinds": {"kiosk": {"checkin_interval_s": 60}},
        "devices": [[i, f"S-{i}", "kiosk", i / 10, i] for i in range(101)],
        "faults": [{"type": "outage", "start_s": start, "end_s": end}],
    }


def rows(rates: Mapping[int, tuple[int, int]], seconds: int) -> list[dict[str, Any]]:
    """Timeline rows of `seconds` real seconds: `rates[t]` = (requests, errors), else 10/0."""
    return [
        {"t": t, "rps": rates.get(t, (10, 0))[0], "errors": rates.get(t, (10, 0))[1]}
        for t in range(seconds)
    ]


def test_the_herd_is_the_peak_after_the_outage_over_the_steady_rate_before_it() -> None:
    """Time scale 1: steady = the mean of the served requests in the interval before the outage
    (40..100 s); the outage's refused requests are not served; the peak is the busiest 5 s
    bucket after its end."""
    rates = dict.fromkeys(range(100, 160), (500, 500))  # refused: not served
    rates.update({160: (80, 0), 161: (60, 0), 162: (40, 0), 163: (20, 0), 164: (50, 0)})
    figures = herd(herd_plan(), rows(rates, 230), 1.0)
    assert figures is not None
    assert figures["steady_rps"] == 10
    assert figures["peak_rps"] == (80 + 60 + 40 + 20 + 50) / 5
    assert figures["ratio"] == 5
    (outage,) = figures["outages"]
    assert (outage["steady_from_s"], outage["recovery_s"], outage["bucket_s"]) == (40, 60, 5)


def test_the_herd_at_a_time_scale_reads_one_row_as_that_many_scenario_seconds() -> None:
    """Time scale 4: a row is 4 scenario s, a bucket two rows (8 s); the outage 100..160 s is
    rows 25..40; the steady rows are 10..24."""
    rates = dict.fromkeys(range(10, 25), (40, 0))
    rates[40], rates[41] = (200, 0), (100, 0)
    figures = herd(herd_plan(), rows(rates, 58), 4.0)
    assert figures is not None
    assert (figures["steady_rps"], figures["peak_rps"], figures["ratio"]) == (40, 150, 3.75)
    assert figures["outages"][0]["bucket_s"] == 8


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({**herd_plan(), "faults": []}, None),  # no outage: no herd
        ({**herd_plan(), "faults": [{"type": "outage", "start_s": 100, "end_s": None}]}, None),
        (herd_plan(duration=150), None),  # the outage outlasts the run
    ],
)
def test_no_outage_that_ends_in_the_run_no_herd(plan: dict[str, Any], expected: None) -> None:
    assert herd(plan, rows({}, 230), 1.0) is expected


def test_an_outage_with_no_steady_second_before_it_has_no_ratio() -> None:
    """The fleet is still arriving until 10 s: an outage at 5 s has nothing to compare with,
    and an expectation on herd.ratio is then unknown (it fails)."""
    figures = herd(herd_plan(start=5, end=65), rows({}, 230), 1.0)
    assert figures == {"peak_rps": None, "steady_rps": None, "ratio": None, "outages": []}


def test_the_worst_of_several_outages_is_the_herd() -> None:
    plan = herd_plan(duration=400)
    plan["faults"] = [
        {"type": "outage", "start_s": 100, "end_s": 160},
        {"type": "outage", "start_s": 300, "end_s": 330},
        {"type": "latency", "start_s": 0, "end_s": None},
    ]
    figures = herd(plan, rows({160: (30, 0), 330: (90, 0)}, 400), 1.0)
    assert figures is not None
    assert [o["end_s"] for o in figures["outages"]] == [160, 330]
    assert figures["ratio"] == max(o["ratio"] for o in figures["outages"]) == 2.6


# -- duplicate serials (pure, at plan time) ------------------------------------------------------

TWINS = """\
[scenario]
duration_s = 30
serial_prefix = "U-"

[kinds.line-a]
count = 3
model = "K1"
serial_prefix = "DUP-"

[kinds.line-b]
count = 2
model = "K1"
serial_prefix = "DUP-"

[kinds.other]
count = 4
model = "K1"

[arrival]
rate = 5

[expectations]
reported = 'devices.duplicate_serials == 4'
"""


def test_two_kinds_with_one_serial_prefix_share_serials_and_the_plan_says_so() -> None:
    """Each kind numbers its own devices from 0: line-a's DUP-000000..2 and line-b's
    DUP-000000..1 collide on two serials; the other kind keeps the scenario's prefix and index.
    The plan keeps all nine devices; validate's text warns."""
    plan = expand(parse(TWINS.encode()), 1)
    assert len(plan.devices) == 9
    by_kind: dict[str, list[str]] = {}
    for device in sorted(plan.devices, key=lambda d: d.index):
        by_kind.setdefault(device.kind, []).append(device.serial)
    assert by_kind["line-a"] == ["DUP-000000", "DUP-000001", "DUP-000002"]
    assert by_kind["line-b"] == ["DUP-000000", "DUP-000001"]
    assert all(re.fullmatch(r"U-00000\d", s) for s in by_kind["other"])
    shared = serials.duplicates(d.serial for d in plan.devices)
    assert shared == {"DUP-000000": 2, "DUP-000001": 2}
    assert serials.duplicate_devices(shared) == 4
    warning = serials.warning(shared)
    assert warning is not None and warning.startswith("duplicate serials: 4 devices share 2")
    assert f"WARNING: {warning}" in render(plan)
    assert serials.warning({}) is None
    assert "WARNING" not in render(expand(parse(TWINS.replace("DUP-", "B-", 1).encode()), 1))


def test_the_report_counts_the_devices_that_share_a_serial_and_warns() -> None:
    plan = expand(parse(TWINS.encode()), 1)
    metrics = Metrics(lambda: 0.0, origin=0.0, usage=lambda: Usage(cpu_s=0.0, rss_mb=1.0))
    built = report.build(
        plan,
        metrics.snapshot(),
        target="t",
        started="2026-01-01T00:00:00+00:00",
        duration_s=30.0,
        devices={"started": 9},
    )
    assert built["devices"]["duplicate_serials"] == 4
    assert any(w.startswith("duplicate serials: 4 devices") for w in built["warnings"])
    assert built["expectations"][0]["passed"]
    assert "herd" not in built  # no outage


# -- restart_server ----------------------------------------------------------------------------


def test_restart_server_is_validated_like_any_action() -> None:
    text = TWINS + '\n[[timeline]]\nat_s = 10\naction = "restart_server"\ndown_s = -1\n'
    with pytest.raises(ScenarioError, match=r"timeline\[0\]\.down_s"):
        parse(text.encode(), file="t.toml")
    plan = expand(parse(text.replace("down_s = -1", "down_s = 2.5").encode()), 1)
    (action,) = plan.timeline
    assert (action.action, dict(action.args)) == (ActionKind.RESTART_SERVER, {"down_s": 2.5})
    assert "restart_server  the embedded server, down 2.5 s" in render(plan)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            ["--target", "http://127.0.0.1:9", "--api-key", "k", "--admin-email", "a@b.c",
             "--admin-password", "p"],
            "--target",
        ),
        (["--workers", "2"], "--workers"),
    ],
)  # fmt: skip
def test_restart_server_needs_the_embedded_server(flags: list[str], named: str) -> None:
    """A target the simulator does not own cannot be restarted by it, nor can the workers'
    shared server from one worker's timeline: exit 2 in one line naming the action, before
    anything is contacted or started."""
    done = subprocess.run(
        [str(SIM), "run", str(SCENARIOS / "restart-mid-rollout.toml"), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert "restart_server (at_s 24)" in line and f"cannot run with {named}" in line


class FakeServer:
    """What restart_server restarts: records the real seconds it was asked to stay down."""

    def __init__(self) -> None:
        self.downs: list[float] = []

    async def restart(self, *, down_s: float = 0.0) -> float:
        self.downs.append(down_s)
        return down_s + 1.0


RESTARTS = """\
[scenario]
duration_s = 60
time_scale = 4

[kinds.kiosk]
count = 2
model = "K1"

[arrival]
rate = 5

[[timeline]]
at_s = 10
action = "restart_server"
down_s = 8

[[timeline]]
at_s = 20
action = "create_group"
name = "after"
"""


@pytest.fixture
async def alpha_admin(server: Server) -> AsyncIterator[AdminClient]:
    site = server.sites["alpha"]
    async with AdminClient(
        server.base,
        api_key=site.key,
        email=site.email,
        password=site.password,
        clock=FakeClock(),
    ) as admin:
        yield admin


async def test_the_timeline_restarts_the_server_at_its_time(alpha_admin: AdminClient) -> None:
    """restart_server runs at its time (on the timeline's clock) and keeps the server down
    down_s scenario seconds: real seconds are those over the time scale; without a server to
    restart (a --target run) the action fails in one line and the timeline goes on."""
    clock = alpha_admin.clock
    assert isinstance(clock, FakeClock)
    for n, restartable in enumerate((FakeServer(), None)):
        plan = expand(parse(RESTARTS.replace('"after"', f'"after-{n}"').encode()), 1)
        results: list[ActionResult] = []
        first, done = asyncio.Event(), asyncio.Event()

        def record(
            result: ActionResult,
            results: list[ActionResult] = results,
            events: tuple[asyncio.Event, asyncio.Event] = (first, done),
        ) -> None:
            results.append(result)
            events[len(results) - 1].set()

        timeline = Timeline(plan, alpha_admin, on_action=record, server=restartable)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(timeline.run(asyncio.Event(), t0=clock.monotonic()))
            await asyncio.sleep(0)
            clock.advance(9.9)
            await asyncio.sleep(0)
            assert results == []  # not before its time
            clock.advance(0.1)
            await first.wait()
            clock.advance(10)
            await done.wait()
        restart, group = results
        assert (restart.action, restart.name, restart.started_s) == (
            ActionKind.RESTART_SERVER, "down 8 s", 10,
        )  # fmt: skip
        assert group.error is None
        if isinstance(restartable, FakeServer):
            assert restart.error is None and restartable.downs == [8 / 4]
        else:
            assert restart.error == "restart_server: no embedded server to restart (a --target run)"


async def test_the_embedded_server_restarts_on_its_port_with_its_database() -> None:
    """SIGTERM, a clean exit, a new process on the same URL and database: the admin's token
    and what was saved before are still there; the CPU figure counts both processes."""
    async with embedded_server() as server:
        creds = server.credentials
        async with AdminClient(
            server.url,
            api_key=creds.api_key,
            email=creds.admin_email,
            password=creds.admin_password,
        ) as admin:
            group = await admin.save_group("before")
            first_pid, url = server.pid, server.url
            down = await server.restart(down_s=0.2)
            assert down >= 0.2 and server.url == url and server.restarts == 1
            assert server.pid != first_pid and process_cpu_s(first_pid) is None
            await admin.verify_token()  # tokens are in the database
            groups = await admin.groups()
            assert any(g.get("uuid") == group["uuid"] for g in groups)
        cpu = server.cpu_s()
        assert cpu is None or cpu > 0


# -- the shipped scenarios ------------------------------------------------------------------------


def test_every_shipped_scenario_checks_that_nothing_is_lost() -> None:
    """issue 14: `events.lost == 0 and events.duplicated == 0` in every shipped scenario; each
    field-bug scenario says which field bug it reproduces in its header."""
    files = sorted(SCENARIOS.glob("*.toml"))
    assert len(files) >= 15
    for path in files:
        scenario = load(path)
        assert NOTHING_LOST in [e.expr for e in scenario.expectations], path.name
        if path.stem in FIELD_BUGS:
            assert path.read_text().startswith("# Field bug: "), path.name


@dataclass
class Run:
    """One scaled-down `midm-sim run` started in the background."""

    name: str
    flags: tuple[str, ...]
    process: subprocess.Popen[str] | None = None
    folder: Path | None = None
    result: tuple[int, dict[str, Any], str] | None = field(default=None, repr=False)

    def start(self, folder: Path) -> None:
        self.folder = folder / self.name
        self.process = subprocess.Popen(
            [str(SIM), "run", str(SCENARIOS / f"{self.name}.toml"), "--no-progress",
             "--report", str(self.folder), *self.flags],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def wait(self) -> tuple[int, dict[str, Any], str]:
        """Its exit code, report and output (once it has ended)."""
        if self.result is None:
            assert self.process is not None and self.folder is not None
            output, _ = self.process.communicate(timeout=RUN_TIMEOUT_S)
            path = self.folder / "report.json"
            assert path.is_file(), output[-3000:]
            self.result = (self.process.returncode, json.loads(path.read_text()), output)
        return self.result


# scenario -> the flags of its scaled-down run (None: no scaled-down run means anything)
FIELD_BUGS: dict[str, tuple[str, ...] | None] = {
    "restart-mid-rollout": ("--devices", "100", "--time-scale", "4"),
    "duplicate-serials": ("--devices", "130", "--time-scale", "4"),
    # its whole 150 s: on a loaded machine 90 s left a quarter of the devices mid-retry; 40
    # devices: enough to share the artifact store's downloads (0 of 40 converged before the fix)
    "download-resume": ("--devices", "40", "--time-scale", "6"),
    # time scale 1 (30 s): 80 downloads of the 1 MB image from a loaded server take seconds
    "partial-wrong-base": ("--devices", "80", "--time-scale", "1"),
    "resave-recover": ("--devices", "100", "--time-scale", "4"),
    "clock-skew": ("--devices", "60", "--time-scale", "4"),
    "herd-after-outage": ("--devices", "300",),  # its own time scale: the herd's resolution
    # time scale 1.5: at 3 a loaded machine made the upload late and with it the first wave's
    # save, from which t90_s counts (the later waves' edits keep their times)
    "staged-rollout-wake": ("--devices", "200", "--time-scale", "1.5"),
    # 2 s answers must be 2 real seconds (time scale 1): bench-like, full size only
    "slow-server": None,
}  # fmt: skip
TEST_OF = {name: "test_" + name.replace("-", "_") for name in FIELD_BUGS}


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Run]]:
    """The scaled-down runs of the selected tests, started together."""
    selected = {item.name for item in request.session.items}
    folder = tmp_path_factory.mktemp("field-bugs")
    started = {}
    for name, flags in FIELD_BUGS.items():
        if flags is not None and TEST_OF[name] in selected:
            started[name] = Run(name, flags)
            started[name].start(folder)
    yield started
    for run in started.values():
        if run.process is not None and run.process.poll() is None:
            run.process.kill()
            run.process.communicate()


def passed(name: str, runs: Mapping[str, Run]) -> dict[str, Any]:
    """The run's report, once it exited 0 with every expectation met."""
    code, built, output = runs[name].wait()
    failed = {e["name"]: e["observed"] for e in built["expectations"] if not e["passed"]}
    assert code == 0, (failed, output[-3000:])
    assert not failed
    return built


def test_restart_mid_rollout(runs: dict[str, Run]) -> None:
    """The server restarted (down 6 s) 10 s into an OTA rollout: the agents met refused
    connections, recovered by themselves, every device applied the image and the server
    agrees, every event is on the server once."""
    r = passed("restart-mid-rollout", runs)
    (restart,) = [a for a in r["admin_timeline"] if a["action"] == "restart_server"]
    assert restart["error"] is None and restart["duration_s"] > 0
    refused = sum(
        n for e in ("checkin", "ws") for c, n in r["requests"].get(e, {}).get("errors", {}).items()
    )
    assert refused > 0  # the agents did see it go away
    c = r["convergence"]["t8-b2"]
    assert c["applied"] == c["server"]["applied"] == r["devices"]["planned"] == 100
    assert r["events"]["queued"] > 0 and r["events"]["on_server"] == r["events"]["queued"]


def test_duplicate_serials(runs: dict[str, Run]) -> None:
    """15 serials on two devices each: reported at plan time, 130 agents (never merged by the
    simulator), the server's one record per serial (15 clones scoped, not 30), each serial's
    second twin refused (its own key is not the bound one: §7) and trying again, never taking
    the first twin's token; the rest of the fleet converges."""
    r = passed("duplicate-serials", runs)
    assert r["devices"]["duplicate_serials"] == 30
    assert r["devices"]["started"] == r["devices"]["planned"] == 130
    assert any(w.startswith("duplicate serials: 30 devices share 15") for w in r["warnings"])
    assert r["convergence"]["clones-scan"]["scoped"] == 15  # the server merged each pair
    assert r["devices"]["enrolled"] == 130 - 15
    assert r["requests"]["register"]["count"] > 130
    assert r["convergence"]["stores-scan"]["applied"] == 100


def test_download_resume(runs: dict[str, Run]) -> None:
    """Every download from the first byte cut at half: each device fetches each file at least
    twice (the app and the image: 4 a device), resumes, and installs both, whatever the other
    devices sharing the artifact store do meanwhile (a device resumes its own part file or
    sink: agent.runtime.artifacts)."""
    r = passed("download-resume", runs)
    assert r["requests"]["file"]["count"] >= 4 * 40
    c = r["convergence"]["update"]
    assert (c["applied"], c["failed"], c["server"]["applied"]) == (40, 0, 40)


def test_partial_wrong_base(runs: dict[str, Run]) -> None:
    """The partial where its base build runs, the full image on the hotfix build (a field
    snapshot's): nothing failed (a partial fed to the hotfix build would fail not_for_device)
    and every device ends on the new build."""
    r = passed("partial-wrong-base", runs)
    c = r["convergence"]["b2"]
    assert (c["applied"], c["failed"], c["server"]["failed"]) == (80, 0, 0)
    assert r["consistency"] == {"checked": 80, "mismatches": []}
    kinds = r["scenario"]["plan"]["kinds"]
    assert kinds["field-hotfix"]["model"] == "TC52"  # from snapshots/tc52.json
    clones = [d[1] for d in r["scenario"]["plan"]["devices"]]  # the snapshot's serial: not used
    assert len(set(clones)) == 80 and r["devices"]["duplicate_serials"] == 0


def test_resave_recover(runs: dict[str, Run]) -> None:
    """A fifth of the fleet re-saved: they register again (never save), and the rollout saved
    after it reaches them too."""
    r = passed("resave-recover", runs)
    assert r["requests"]["register"]["count"] == 100 + 20
    assert r["devices"]["saved_twice"] == 0
    assert r["convergence"]["pos-2"]["applied"] == 100


def test_clock_skew(runs: dict[str, Run]) -> None:
    """Clocks a day ahead, a day behind and set back a day mid-rollout: every device installs
    the image, and the server's profile/status agrees (it orders a device's reports as it
    stores them, not by the device's clock: tests/server/test_event_order.py)."""
    r = passed("clock-skew", runs)
    c = r["convergence"]["b2"]
    assert c["applied"] == c["server"]["applied"] == 60


def test_herd_after_outage(runs: dict[str, Run]) -> None:
    """A 60 s outage of the whole backend: the agents come back at no more than 3x the steady
    rate (agent.core.backoff; it was 8 to 10x), and all of them."""
    r = passed("herd-after-outage", runs)
    figures = r["herd"]
    assert figures["steady_rps"] > 0 and 0 < figures["ratio"] <= 3
    assert figures["ratio"] == pytest.approx(figures["peak_rps"] / figures["steady_rps"], 1e-2)
    assert r["devices"]["enrolled"] == 300


def test_staged_rollout_wake(runs: dict[str, Run]) -> None:
    """Three waves by group; the sleeping handhelds of each wave woken for it."""
    r = passed("staged-rollout-wake", runs)
    c = r["convergence"]["pick-4"]
    assert c["applied"] == 200 and c["t90_s"] > 28
    assert not math.isnan(c["t99_s"])
