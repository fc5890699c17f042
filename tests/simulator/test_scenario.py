"""Scenario files: the shipped ones load; every mistake is one line naming file, line and key."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import protocol
from agent.models import AppRecord
from simulator import scenario as scenario_module
from simulator.plan.expand import expand
from simulator.plan.model import ActionKind, AppSpec, PowerStep, Window
from simulator.plan.spec import ArrivalProcess
from simulator.scenario import ScenarioError, load, parse
from simulator.toml_fields import Locator

SCENARIOS = Path(__file__).parent.parent.parent / "scenarios"
SHIPPED = (
    "quickstart", "rollout-by-group", "ota-on-battery", "partial-chain", "push-fleet",
    "herd-after-outage", "partial-wrong-base", "download-resume", "resave-recover", "clock-skew",
    "duplicate-serials", "restart-mid-rollout", "slow-server", "staged-rollout-wake", "soak",
)  # fmt: skip

MINIMAL = """\
[scenario]
duration_s = 30
devices = 10

[kinds.kiosk]
share = 1.0
model = "K1"

[arrival]
rate = 5
"""


def error_of(text: str, file: str = "bad.toml") -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse(text.encode(), file=file)
    return caught.value


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load(name: str) -> None:
    """Every scenario the project ships is valid and named after its file."""
    scenario = load(SCENARIOS / f"{name}.toml")
    assert scenario.name == name
    assert scenario.kinds and scenario.expectations and scenario.timeline


def test_quickstart_is_a_short_run_of_a_thousand_devices() -> None:
    """quickstart: >= 1000 devices arriving over about 10 s, a group, an app upload and a
    profile rolled out to the fleet, well inside a minute."""
    scenario = load(SCENARIOS / "quickstart.toml")
    assert scenario.devices >= 1000
    assert scenario.duration_s / scenario.time_scale <= 40
    actions = [a.action for a in scenario.timeline]
    assert ActionKind.CREATE_GROUP in actions
    assert ActionKind.UPLOAD_APP in actions
    assert ActionKind.SAVE_PROFILE in actions
    assert {k.kind.group for k in scenario.kinds} <= {
        a.args["name"] for a in scenario.timeline if a.action is ActionKind.CREATE_GROUP
    }


def test_the_schema_in_the_docstring_is_a_valid_scenario() -> None:
    """The schema simulator/scenario.py documents (and the README copies) parses as is."""
    doc = scenario_module.__doc__ or ""
    text = textwrap.dedent(doc[doc.index("    [scenario]") :])
    scenario = parse(text.encode(), file="schema.toml")
    assert [k.kind.name for k in scenario.kinds] == ["kiosk", "tablet"]
    assert {a.action for a in scenario.timeline} == set(ActionKind)
    assert len(scenario.expectations) == 3


def test_faults_parse_into_the_plan_and_its_hash() -> None:
    text = MINIMAL + (
        '\n[[faults]]\ntype = "status"\nat_s = 5\nuntil_s = 9\nstatus = 429\n'
        'retry_after_s = 3\nprobability = 0.5\nendpoints = ["checkin"]\n'
        '\n[[faults]]\ntype = "bandwidth"\nat_s = 0\nkbps = 2\nkinds = ["kiosk"]\n'
    )
    scenario = parse(text.encode(), file="f.toml")
    status, bandwidth = scenario.faults
    assert (status.type, status.start_s, status.end_s, status.status) == ("status", 5, 9, 429)
    assert (status.retry_after_s, status.probability) == (3.0, 0.5)
    assert status.endpoints == frozenset({"checkin"}) and status.kinds is None
    assert bandwidth.bytes_per_s == 2048 and bandwidth.end_s == math.inf
    plan = expand(scenario, 1)
    assert plan.faults == scenario.faults
    assert plan.plan_hash() != expand(parse(MINIMAL.encode(), file="f.toml"), 1).plan_hash()


def test_a_minimal_scenario_gets_the_defaults() -> None:
    scenario = parse(MINIMAL.encode(), file="dir/minimal.toml")
    assert scenario.name == "minimal"
    assert scenario.source == "dir/minimal.toml"
    assert scenario.seed == 1 and scenario.time_scale == 1.0
    kind = scenario.kinds[0].kind
    assert kind.power == (PowerStep(at_s=0.0, ac=True, battery=100.0),)
    assert kind.push is True and kind.network == "wifi" and kind.group is None
    assert scenario.arrival.process is ArrivalProcess.POISSON
    assert scenario.timeline == () and scenario.expectations == ()


def test_the_full_schema_reads_into_typed_values() -> None:
    text = """\
[scenario]
name = "full"
description = "all of it"
duration_s = 120
time_scale = 4
seed = 7
serial_prefix = "F-"

[catalog.apps.app-1]
package = "com.example.app"
version_code = 1

[catalog.otas.b2]
post_build = "acme/k1/k1:13/B/2:user/release-keys"
pre_build = "acme/k1/k1:13/B/1:user/release-keys"
build_date = 1700000000
device_id = "k1"
product_id = "k1_eu"
ab_update = true
size_kb = 8

[kinds.k]
count = 3
manufacturer = "Acme"
brand = "AcmeB"
model = "K1"
apps = ["app-1"]
network = "mobile"
push = false
sync_spread_s = 4
clock_skew_s = -2.5
checkin_interval_s = 30
group = "g"
sleep = [[10, 20], [30, 40]]
offline = [[50, 55]]
power = [{at_s = 0, ac = false, battery = 40}, {at_s = 60, ac = true}]

[kinds.k.build]
fingerprint = "acme/k1/k1:13/B/1:user/release-keys"
build_date = 1690000000
ab_update = true
region = "eu"

[arrival]
process = "even"
start_s = 1
phases = [{duration_s = 2, from = 0, to = 4}, {duration_s = 1, rate = 4}]

[[timeline]]
at_s = 0
action = "create_group"
name = "g"

[[timeline]]
at_s = 0
action = "create_group"
name = "child"
parent = "g"
enabled = false

[[timeline]]
at_s = 3
action = "upload_ota"
ota = "b2"

[[timeline]]
at_s = 2
action = "upload_app"
app = "app-1"

[[timeline]]
at_s = 5
action = "save_profile"
name = "p"
[timeline.body]
scope = { group = ["child"] }
apps = { install = [{ app = "app-1", grant_all = true }] }
otas = ["b2"]
settings = { otas = { partialFirst = true } }
schedule_date = { start_on = 2030-01-01T00:00:00Z }

[[timeline]]
at_s = 6
action = "edit_profile"
name = "p"
changes = { profile = { wakeToApply = true } }

[[timeline]]
at_s = 7
action = "resave_devices"
kind = "k"
count = 1

[[timeline]]
at_s = 8
action = "revoke_tokens"

[expectations]
done = 'convergence("p").applied == 3'
"""
    scenario = parse(text.encode(), file="full.toml")
    assert (scenario.name, scenario.description, scenario.seed) == ("full", "all of it", 7)
    assert scenario.time_scale == 4.0 and scenario.devices == 3
    kind = scenario.kinds[0].kind
    assert kind.apps == (AppSpec(package="com.example.app", version_code=1, version_name="1",
                                 label="app"),)  # fmt: skip
    assert kind.sleep == (Window(start_s=10, end_s=20), Window(start_s=30, end_s=40))
    assert kind.offline == (Window(start_s=50, end_s=55),)
    assert kind.power == (
        PowerStep(at_s=0, ac=False, battery=40),
        PowerStep(at_s=60, ac=True, battery=40),
    )
    assert (kind.network, kind.push, kind.clock_skew_s, kind.checkin_interval_s) == (
        "mobile", False, -2.5, 30.0,
    )  # fmt: skip
    assert kind.sync_spread_s == 4.0
    assert kind.build.ab_update and kind.build.region == "eu"
    assert kind.build.build_date == 1690000000
    assert [a.action for a in scenario.timeline] == [
        ActionKind.CREATE_GROUP,
        ActionKind.CREATE_GROUP,
        ActionKind.UPLOAD_APP,
        ActionKind.UPLOAD_OTA,
        ActionKind.SAVE_PROFILE,
        ActionKind.EDIT_PROFILE,
        ActionKind.RESAVE_DEVICES,
        ActionKind.REVOKE_TOKENS,
    ]  # fmt: skip  (ordered by at_s: the app at 2 s before the image at 3 s)
    body = scenario.timeline[4].args["body"]
    assert body["profile"]["name"] == "p"
    assert body["schedule_date"]["start_on"] == "2030-01-01T00:00:00Z"
    assert scenario.timeline[3].args["pre_build"].endswith("B/1:user/release-keys")
    assert scenario.timeline[1].args == {"name": "child", "parent": "g", "enabled": False}


# -- errors: one line, file, line, key --------------------------------------------------------

BAD = [
    pytest.param(
        MINIMAL.replace("model =", "modle = 1\nmodel ="),
        7,
        "kinds.kiosk.modle",
        "unknown key (did you mean 'model'?)",
        id="unknown-key",
    ),
    pytest.param(
        MINIMAL.replace("duration_s = 30", 'duration_s = "30"'),
        2,
        "scenario.duration_s",
        "must be a number, not a string",
        id="wrong-type",
    ),
    pytest.param(
        MINIMAL.replace("share = 1.0", "count = -3"),
        6,
        "kinds.kiosk.count",
        "must not be negative, not -3",
        id="negative-count",
    ),
    pytest.param(
        MINIMAL + '\n[[faults]]\ntype = "outage"\nat_s = 10\nkinds = ["ghost"]\n',
        15,
        "faults[0].kinds[0]",
        "no kind is named 'ghost'",
        id="fault-unknown-kind",
    ),
    pytest.param(
        MINIMAL + '\n[[faults]]\ntype = "drop"\nat_s = 10\nendpoints = ["checkins"]\n',
        15,
        "faults[0].endpoints[0]",
        "not 'checkins'",
        id="fault-unknown-endpoint",
    ),
    pytest.param(
        MINIMAL + '\n[[faults]]\ntype = "outage"\nat_s = 10\nuntil_s = 5\n',
        15,
        "faults[0].until_s",
        "must be after at_s (10), not 5",
        id="fault-ends-before-it-starts",
    ),
    pytest.param(
        MINIMAL + '\n[[faults]]\ntype = "latency"\nat_s = 10\n',
        12,
        "faults[0].latency_ms",
        "is required for a latency fault",
        id="latency-without-ms",
    ),
    pytest.param(
        MINIMAL + '\n[[faults]]\ntype = "status"\nat_s = 1\nstatus = 418\n',
        15,
        "faults[0].status",
        "must be one of 429, 500, 502, 503, 504",
        id="fault-status",
    ),
    pytest.param(
        MINIMAL.replace("model =", "sync_spread_s = 7200\nmodel ="),
        7,
        "kinds.kiosk.sync_spread_s",
        "must be at most 3600",
        id="sync-spread-over-an-hour",
    ),
    pytest.param(
        MINIMAL + "[expectations]\nok = 'convergence(\"nope\").t99_s < 5'\n",
        12,
        "expectations.ok",
        "no profile of the timeline is named 'nope'",
        id="unknown-profile",
    ),
    pytest.param(
        MINIMAL + "[expectations]\nok = 'requests[\"checkin\"].p99_sec < 5'\n",
        12,
        "expectations.ok",
        "unknown field 'p99_sec' of requests",
        id="unknown-metric",
    ),
    pytest.param(
        MINIMAL.replace(
            "[arrival]", "power = [{at_s = 0, ac = true}, {at_s = 5, ac = 1}]\n\n[arrival]"
        ),
        9,
        "kinds.kiosk.power[1].ac",
        "must be true or false, not an integer",
        id="inline-table",
    ),
    pytest.param(
        MINIMAL.replace('model = "K1"', 'model = "K1"\ngroup = "stores"'),
        8,
        "kinds.kiosk.group",
        "no create_group action at at_s = 0 creates 'stores'",
        id="group-not-created",
    ),
    pytest.param(
        MINIMAL + '\n[[timeline]]\nat_s = 1\naction = "upload_app"\napp = "ghost"\n',
        15,
        "timeline[0].app",
        "no catalog app is named 'ghost'",
        id="unknown-app",
    ),
    pytest.param(
        MINIMAL + '\n[[timeline]]\nat_s = 0\naction = "create_group"\nname = "a"\n'
        '\n[[timeline]]\nat_s = -1\naction = "create_group"\nname = "b"\n',
        18,
        "timeline[1].at_s",
        "must not be negative, not -1",
        id="second-array-element",
    ),
    pytest.param(
        MINIMAL + '\n[[timeline]]\nat_s = 1\naction = "save_profile"\nname = "p"\n'
        '[timeline.body]\nscope = { group = ["nowhere"] }\n',
        17,
        "timeline[0].body.scope.group[0]",
        "no group created before is named 'nowhere'",
        id="profile-group",
    ),
    pytest.param(
        MINIMAL + '\n[[timeline]]\nat_s = 1\naction = "dance"\n',
        14,
        "timeline[0].action",
        "must be one of create_group",
        id="unknown-action",
    ),
    pytest.param(
        MINIMAL.replace("rate = 5", "rate = 5\nphases = []"),
        10,
        "arrival.rate",
        "give either rate (with ramp_s) or phases",
        id="rate-and-phases",
    ),
    pytest.param(
        MINIMAL.replace("rate = 5", "rate = 0.1"),
        9,
        "arrival",
        "the last of 10 devices is due at 90.0 s, after duration_s (30)",
        id="arrivals-after-the-end",
    ),
    pytest.param(
        MINIMAL.replace('model = "K1"', 'model = "K1"\nsleep = [[5, 3]]'),
        8,
        "kinds.kiosk.sleep[0]",
        "must have 0 <= start_s < end_s, not [5, 3]",
        id="window",
    ),
    pytest.param(
        MINIMAL.replace("[arrival]", "[arrival"),
        9,
        "",
        "Expected ']'",
        id="toml-syntax",
    ),
    pytest.param(
        MINIMAL.replace("[kinds.kiosk]\nshare = 1.0", "[kinds.kiosk]\nshare = 0.5"),
        5,
        "kinds",
        "the shares add up to 0.5, not 1",
        id="shares",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), BAD)
def test_each_mistake_is_one_line_naming_file_line_and_key(
    text: str, line: int, key: str, message: str
) -> None:
    error = error_of(text)
    shown = str(error)
    assert "\n" not in shown
    assert (error.file, error.line, error.key) == ("bad.toml", line, key), shown
    assert message in error.message, shown
    prefix = f"bad.toml:{line}: {key}: " if key else f"bad.toml:{line}: "
    assert shown.startswith(prefix), shown


def test_a_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nothing.toml: cannot read the scenario"):
        load(tmp_path / "nothing.toml")


def test_scenario_errors_exit_2() -> None:
    assert error_of("[scenario]\n").exit_code == 2


# -- snapshots --------------------------------------------------------------------------------


def agent_snapshot(folder: Path) -> Path:
    """A snapshot written by the real `midm-agent snapshot` (simulated platform, --facts)."""
    facts = folder / "facts.json"
    facts.write_text(
        json.dumps(
            {
                "hardware_info": {"manufacturer": "Zebra", "brand": "Zebra", "model": "TC52"},
                "build": {"fingerprint": "zebra/tc52/tc52:11/R1/5:user/release-keys",
                          "buildDate": 1650000000, "deviceId": "tc52", "abUpdate": True},
            }
        )
    )  # fmt: skip
    output = folder / "tc52.json"
    subprocess.run(
        [sys.executable, "-m", "agent.cli", "snapshot", "--platform", "simulated",
         "--state-dir", str(folder / "state"), "--server", "http://127.0.0.1:9",
         "--api-key", "k", "--facts", str(facts), "--output", str(output)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    snapshot = json.loads(output.read_text())
    record = AppRecord(package_name="com.zebra.scan", version_code=12, label="Scan",
                       cert_md5="ab" * 16)  # fmt: skip
    snapshot["apps"].append(protocol.app_to_wire(record))
    output.write_text(json.dumps(snapshot))
    return output


def test_a_kind_from_a_midm_agent_snapshot(tmp_path: Path) -> None:
    """The snapshot's hardware, build and apps are the kind's; the kind's own keys win."""
    agent_snapshot(tmp_path)
    (tmp_path / "s.toml").write_text(
        MINIMAL.replace('model = "K1"', 'snapshot = "tc52.json"\nbrand = "Mine"')
    )
    kind = load(tmp_path / "s.toml").kinds[0].kind
    assert (kind.manufacturer, kind.brand, kind.model) == ("Zebra", "Mine", "TC52")
    assert kind.build.fingerprint == "zebra/tc52/tc52:11/R1/5:user/release-keys"
    assert kind.build.build_date == 1650000000 and kind.build.ab_update
    assert kind.apps == (
        AppSpec(package="com.zebra.scan", version_code=12, label="Scan", cert_md5="ab" * 16),
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x00\x01 not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"hardware_info": {}}', "no snapshot_version 1"),
        (b'{"snapshot_version": 1, "hardware_info": {}, "apps": []}', "no build object"),
        (
            b'{"snapshot_version": 1, "hardware_info": {"colour": "red"}, "build": {}, "apps": []}',
            "unexpected field or value",
        ),
    ],
)
def test_a_snapshot_file_that_is_not_one(tmp_path: Path, content: bytes, why: str) -> None:
    (tmp_path / "snap.json").write_bytes(content)
    text = MINIMAL.replace('model = "K1"', 'snapshot = "snap.json"')
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load(tmp_path / "s.toml")
    error = caught.value
    assert (error.line, error.key) == (7, "kinds.kiosk.snapshot")
    assert f"snap.json: not a midm-agent snapshot ({why}" in error.message


def test_a_missing_snapshot_file(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(MINIMAL.replace('model = "K1"', 'snapshot = "gone.json"'))
    with pytest.raises(ScenarioError, match=r"s.toml:7: kinds.kiosk.snapshot: gone.json: cannot"):
        load(tmp_path / "s.toml")


# -- the line finder --------------------------------------------------------------------------


def test_locator_finds_headers_keys_arrays_of_tables_and_inline_values() -> None:
    text = """\
# comment = not a key
[a]
x = 1
"quoted.key" = 2
d.e = 3
long = [
  { k = 1 },
  { k = 2, j = "x = 1" },
]
s = \"\"\"
y = 9
\"\"\"

[[t]]
v = 1
[t.sub]
w = 1

[[t]]
v = 2
"""
    where = Locator(text)
    assert where.line_of(("a",)) == 2
    assert where.line_of(("a", "x")) == 3
    assert where.line_of(("a", "quoted.key")) == 4
    assert where.line_of(("a", "d", "e")) == 5
    assert where.line_of(("a", "long", 1, "k")) == 8
    assert where.line_of(("a", "long", 0, "k")) == 7
    assert where.line_of(("a", "y")) == 2  # inside a multi-line string: not a key
    assert where.line_of(("t", 0, "v")) == 15
    assert where.line_of(("t", 0, "sub", "w")) == 17
    assert where.line_of(("t", 1, "v")) == 20
    assert where.line_of(("t", 1, "missing")) == 19
    assert where.line_of(("nowhere",)) == 1
