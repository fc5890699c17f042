"""Scenario files: TOML (stdlib `tomllib`) validated into a typed Scenario (simulator/plan/spec.py).

Every mistake is one ScenarioError, printed as one line `FILE:LINE: KEY: what is wrong`
(unknown key, wrong type, negative count, a name that nothing defines, an expectation naming an
unknown metric or profile, a snapshot file that is not one); `midm-sim` exits 2 with it.
tomllib gives no line numbers, so simulator/toml_fields.py finds each key's line in the text.
Rules: times are scenario seconds from the run's start (--time-scale X runs them X times
faster); the scenario's own keys are snake_case, profile bodies keep the protocol's (camelCase)
names; a name (group, app, image, profile) must be defined by the catalog or by an earlier
timeline action before it is used; the scenario's own fleet must be due to arrive within
duration_s. Before the run starts the actions at at_s 0 run and every device is saved in its
kind's group, so agents need only register.

Schema: every key optional unless marked *required*; this block is itself a valid scenario
(tests/simulator/test_scenario.py parses it), alternatives are in comments.

    [scenario]
    name = "example"           # default: the file's stem
    description = "one line"
    duration_s = 60            # *required*, > 0: the run stops by itself then (--duration)
    time_scale = 1.0           # > 0: schedules run this many times faster (--time-scale)
    seed = 1                   # the default --seed
    devices = 1000             # the fleet's total: *required* when a kind has a share; default
                               # the sum of the counts (--devices N scales every kind to N)
    serial_prefix = "SIM-"     # device i's serial is PREFIX + i, zero-padded to 6 digits

    [catalog.apps.kiosk-1]     # generated, signed APKs by name (kinds' apps and upload_app)
    package = "com.example.kiosk"      # *required*
    version_code = 1                   # *required*, >= 1
    version_name = "1.0"               # default: str(version_code)
    label = "Kiosk"                    # default: the package's last part

    [catalog.apps.kiosk-2]
    package = "com.example.kiosk"
    version_code = 2

    [catalog.otas.k1-b2]       # generated OTA zips by name (upload_ota and profiles' otas)
    post_build = "acme/k1/k1:14/B2/2:user/release-keys"  # *required*: the build it installs
    # pre_build = "acme/k1/k1:14/B1/1:user/release-keys" # a partial image from that build
    build_date = 1706745600    # *required*: epoch seconds of the new build
    device_id = "k1"           # *required*: the devices it is for (the zip's pre-device)
    product_id = "k1_eu"
    sku_id = ""
    ab_update = true           # an A/B (seamless) image
    type = "base"              # base | region
    size_kb = 64               # its payload's size

    [kinds.kiosk]              # one table per kind of device; at least one
    share = 0.8                # a share of what the counts leave of `devices` (shares add up
                               # to 1); or count = 800 (>= 0)
    # snapshot = "tc52.json"   # a `midm-agent snapshot` file (relative to the scenario): its
                               # hardware_info (not the serial), build, apps, power and network
                               # are the kind's defaults; the keys below override them
    # serial_prefix = "K-"     # its devices are K- + their number within the kind (default:
                               # the scenario's prefix + the fleet index); two kinds with one
                               # prefix share serials (reported: devices.duplicate_serials)
    manufacturer = "Acme"
    brand = "Acme"
    model = "K1"               # *required* without a snapshot
    apps = ["kiosk-1"]         # installed apps, by catalog name (added to a snapshot's)
    network = "ethernet"       # wifi | ethernet | mobile | none
    push = true                # holds the WebSocket push channel
    sync_spread_s = 0          # answers a push `sync` after a random 0..N s (0: at once)
    clock_skew_s = 0.0         # its clock runs this far ahead (negative: behind)
    checkin_interval_s = 60    # > 0; default: the agent's, until the server says
    group = "stores"           # the group its devices are saved in (created at at_s 0)
    sleep = [[30, 40]]         # windows [start_s, end_s) it sleeps, in order
    offline = [[45, 50]]       # windows it cannot reach the network, in order
    power = [{ at_s = 0, ac = false, battery = 40 }, { at_s = 20, ac = true }]
                               # power over time, at_s increasing; before the first: AC, 100 %;
                               # battery omitted: the previous step's (0..100)

    [kinds.kiosk.build]        # the build its check-ins report
    fingerprint = "acme/k1/k1:14/B1/1:user/release-keys"
    build_date = 1701475200    # epoch seconds
    display_id = ""
    sdk = "34"
    device_id = "k1"
    product_id = "k1_eu"
    sku_id = ""
    customer_id = ""
    ab_update = true
    region = ""

    [kinds.tablet]
    share = 0.2
    model = "T8"

    [arrival]                  # *required*: the open model (each device has its intended start)
    process = "poisson"        # poisson (exponential gaps) | even
    start_s = 0                # the earliest arrival
    rate = 100                 # devices per second (> 0), reached by a linear ramp from 0 over
    ramp_s = 2                 # ramp_s seconds; or phases, each ramping linearly (the last rate
                               # holds after them):
    # phases = [{ duration_s = 5, from = 0, to = 200 }, { duration_s = 5, rate = 200 }]

    [[timeline]]               # admin actions in at_s order (ties: the file's), each at_s >= 0
    at_s = 0
    action = "create_group"
    name = "stores"            # *required*, unique
    # parent = "emea"          # a group created before: a child group
    enabled = true

    [[timeline]]
    at_s = 10
    action = "upload_app"
    app = "kiosk-2"            # *required*: a catalog app (uploaded once)

    [[timeline]]
    at_s = 10
    action = "upload_ota"
    ota = "k1-b2"              # *required*: a catalog image (uploaded once)

    [[timeline]]
    at_s = 12
    action = "save_profile"
    name = "rollout"           # *required*, unique: the profile's name

    [timeline.body]            # *required*: the protocol's Profile body, names for uuids
    scope = { group = ["stores"] }     # group names (child groups included); device = serials
    apps = { install = [{ app = "kiosk-2", silent_install = true }] }   # app = a name
    otas = ["k1-b2"]                   # image names
    settings = { otas = { need_ac = true, partialFirst = true } }
    profile = { wakeToApply = false }  # isGlobal, schedule_date, ... as the protocol has them

    [[timeline]]
    at_s = 30
    action = "edit_profile"
    name = "rollout"           # *required*: a profile saved before
    changes = { settings = { otas = { need_ac = false } } }
                               # *required*: merged into the loaded profile (tables key by
                               # key, lists and values replaced), names as in body

    [[timeline]]
    at_s = 40
    action = "resave_devices"  # saved again: the server resets them and revokes their tokens
    kind = "kiosk"             # drawn (by the seed) from this kind's devices arrived by then
    count = 5                  # or share = 0.01; and/or serials = ["SIM-000001"]

    [[timeline]]
    at_s = 50
    action = "revoke_tokens"   # the admin's access token is revoked; the timeline logs in again

    [[timeline]]
    at_s = 55
    action = "restart_server"  # the embedded server stops (SIGTERM) and starts again on the
    down_s = 0                 # same port and database after down_s (refused with --target)

    [[faults]]                 # between the devices and the target, for a while (any number)
    type = "latency"           # latency | outage | refused | drop | reset | truncate | status |
                               # bandwidth | clock_jump (what each does: simulator/plan/faults.py)
    at_s = 20                  # from (scenario seconds)
    until_s = 40               # to (exclusive; default: the end of the run)
    kinds = ["tablet"]         # the kinds it hits (default: every kind)
    endpoints = ["checkin"]    # the requests it hits: register, checkin, apps, profiles,
                               # ota_next, events, download, push, ... (default: all)
    latency_ms = 2000          # latency: added before each request
    jitter_ms = 500            # latency: plus a uniform 0..jitter
    # probability = 0.5        # drop, reset, truncate, status, refused: share of requests hit
    # status = 503             # status: the answer (429, 500, 502, 503, 504)
    # retry_after_s = 5        # status: with Retry-After (default: none)
    # at_fraction = 0.5        # reset, truncate: a download stops after this share of the file
    # kbps = 256               # bandwidth: each device's downloads at most this fast
    # jump_s = 86400           # clock_jump: the kinds' wall clocks jump by this at at_s

    [expectations]             # NAME = "expression", checked on the report at the end; the
                               # language and its metrics: simulator/expectations.py
    converged = 'convergence("rollout").t99_s < 30'    # "rollout": a profile saved above
    fast = 'requests["checkin"].p99_ms < 50'
    clean = 'errors.rate < 0.001 and consistency.mismatches == 0'
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, NoReturn

from agent import protocol
from agent.models import BuildInfo
from simulator import expectations as language
from simulator.plan.expand import freeze, phases_of, time_of
from simulator.plan.faults import DOWNLOAD, PUSH, Fault, FaultType
from simulator.plan.model import (
    BUILD_KEYS,
    ActionKind,
    AdminAction,
    AppSpec,
    DeviceKind,
    Expectation,
    PowerStep,
    Window,
)
from simulator.plan.spec import ArrivalProcess, ArrivalSpec, KindSpec, Phase, Scenario
from simulator.toml_fields import REQUIRED, Context, Fields, Key, Locator, ScenarioError

__all__ = ["ScenarioError", "load", "parse"]

NETWORKS = ("wifi", "ethernet", "mobile", "none")
OTA_TYPES = ("base", "region")
PROFILE_KEYS = (
    "isGlobal", "enabled", "profile", "scope", "apps", "otas", "schedule_date", "settings",
)  # fmt: skip
INSTALL_FLAGS = ("starts_on_update", "silent_install", "grant_all", "reboots_on_update")
_CONVERGENCE = re.compile(r"""convergence\s*\(\s*(?:"([^"]*)"|'([^']*)')\s*\)""")
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")


# -- the scenario ----------------------------------------------------------------------------

TOP_KEYS = ("scenario", "catalog", "kinds", "arrival", "timeline", "faults", "expectations")
FAULT_KEYS = (
    "type", "at_s", "until_s", "kinds", "endpoints", "latency_ms", "jitter_ms", "probability",
    "status", "retry_after_s", "at_fraction", "kbps", "jump_s",
)  # fmt: skip
FAULT_ENDPOINTS = (
    "login", "exists", "save", "register", "checkin", "apps", "profiles", "ota_next", "events",
    DOWNLOAD, PUSH,
)  # fmt: skip
FAULT_STATUSES = (429, 500, 502, 503, 504)
SCENARIO_KEYS = (
    "name", "description", "duration_s", "time_scale", "seed", "devices", "serial_prefix",
)  # fmt: skip
APP_KEYS = ("package", "version_code", "version_name", "label")
OTA_KEYS = (
    "post_build", "pre_build", "build_date", "device_id", "product_id", "sku_id", "ab_update",
    "type", "size_kb",
)  # fmt: skip
KIND_KEYS = (
    "count", "share", "snapshot", "serial_prefix", "manufacturer", "brand", "model", "apps",
    "network", "push", "sync_spread_s", "clock_skew_s", "checkin_interval_s", "group", "sleep",
    "offline", "power", "build",
)  # fmt: skip
ARRIVAL_KEYS = ("process", "start_s", "rate", "ramp_s", "phases")
ACTION_KEYS: dict[ActionKind, tuple[str, ...]] = {
    ActionKind.CREATE_GROUP: ("name", "parent", "enabled"),
    ActionKind.UPLOAD_APP: ("app",),
    ActionKind.UPLOAD_OTA: ("ota",),
    ActionKind.SAVE_PROFILE: ("name", "body"),
    ActionKind.EDIT_PROFILE: ("name", "changes"),
    ActionKind.RESAVE_DEVICES: ("kind", "count", "share", "serials"),
    ActionKind.REVOKE_TOKENS: (),
    ActionKind.RESTART_SERVER: ("down_s",),
}


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file (expectations with simulator.expectations.parse)."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScenarioError(file, 0, "", f"cannot read the scenario ({exc.strerror})") from exc
    return parse(data, file=file)


def parse(data: bytes, *, file: str = "<scenario>") -> Scenario:
    """Validate the bytes of a scenario (`file` names it in errors and resolves snapshots)."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ScenarioError(file, 0, "", "not UTF-8 text") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        message = _TOML_LINE.sub("", str(exc)).strip()
        raise ScenarioError(file, int(found.group(1)) if found else 0, "", message) from exc
    ctx = Context(file, Locator(text))
    return _Reader(ctx, Path(file).parent).scenario(
        Fields(ctx, (), document, TOP_KEYS), Path(file).stem, hashlib.sha256(data).hexdigest()
    )


class _Reader:
    def __init__(self, ctx: Context, folder: Path) -> None:
        self.ctx, self.folder = ctx, folder
        self.apps: dict[str, AppSpec] = {}
        self.otas: dict[str, dict[str, Any]] = {}

    def scenario(self, top: Fields, stem: str, sha256: str) -> Scenario:
        head = top.table("scenario", SCENARIO_KEYS, required=True)
        duration = head.number("duration_s", positive=True)
        self.catalog(top.table("catalog", ("apps", "otas")))
        kinds = self.kinds(top)
        counted = sum(k.count or 0 for k in kinds)
        shared = [k for k in kinds if k.share is not None]
        if shared:
            total = head.integer("devices", minimum=0)
            shares = sum(k.share or 0.0 for k in shared)
            if abs(shares - 1.0) > 1e-9:
                self.ctx.fail(("kinds",), f"the shares add up to {shares:g}, not 1")
            if total < counted:
                head.fail("devices", f"is less than the kinds' counts ({counted})")
        else:
            total = head.integer("devices", counted, minimum=0)
        arrival = self.arrival(top.table("arrival", ARRIVAL_KEYS, required=True))
        timeline = self.timeline(top, kinds)
        profiles = {str(a.args["name"]) for a in timeline if a.action is ActionKind.SAVE_PROFILE}
        expectations = self.expectations(top.table("expectations"), profiles)
        faults = self.faults(top, kinds, duration)
        scenario = Scenario(
            name=head.string("name", stem),
            description=head.string("description", ""),
            source=self.ctx.file,
            sha256=sha256,
            duration_s=duration,
            time_scale=head.number("time_scale", 1.0, positive=True),
            seed=head.integer("seed", 1, minimum=0),
            devices=total,
            serial_prefix=head.string("serial_prefix", "SIM-"),
            kinds=kinds,
            arrival=arrival,
            timeline=timeline,
            expectations=expectations,
            faults=faults,
        )
        self.check_arrivals(scenario)
        return scenario

    # catalog -----------------------------------------------------------------------------

    def catalog(self, catalog: Fields) -> None:
        for name, raw in catalog.table("apps").data.items():
            t = Fields(self.ctx, ("catalog", "apps", name), raw, APP_KEYS)
            package = t.name("package")
            code = t.integer("version_code", minimum=1)
            self.apps[name] = AppSpec(
                package=package,
                version_code=code,
                version_name=t.string("version_name", str(code)),
                label=t.string("label", package.rsplit(".", 1)[-1]),
            )
        for name, raw in catalog.table("otas").data.items():
            t = Fields(self.ctx, ("catalog", "otas", name), raw, OTA_KEYS)
            self.otas[name] = {
                "name": name,
                "post_build": t.name("post_build"),
                "pre_build": t.string("pre_build", None),
                "build_date": t.integer("build_date", minimum=0),
                "device_id": t.name("device_id"),
                "product_id": t.string("product_id", ""),
                "sku_id": t.string("sku_id", ""),
                "ab_update": t.boolean("ab_update", False),
                "type": t.string("type", "base", choices=OTA_TYPES),
                "size_kb": t.integer("size_kb", 64, minimum=0),
            }

    # fleet -------------------------------------------------------------------------------

    def kinds(self, top: Fields) -> tuple[KindSpec, ...]:
        entries = top.named_tables("kinds")
        if not entries:
            top.fail("kinds", "at least one kind of device is required ([kinds.NAME])")
        return tuple(self.kind(name, raw) for name, raw in entries)

    def kind(self, name: str, raw: Any) -> KindSpec:
        t = Fields(self.ctx, ("kinds", name), raw, KIND_KEYS)
        if t.has("count") == t.has("share"):
            t.fail("count", "give either count or share")
        count = t.integer("count", None, minimum=0)
        share = t.number("share", None, minimum=0.0, maximum=1.0)
        base = self.snapshot(t) if t.has("snapshot") else None
        hardware = base["hardware"] if base else {}
        model = t.string("model", hardware.get("model") or REQUIRED)
        build = self.build(t.table("build", BUILD_KEYS), base["build"] if base else BuildInfo())
        apps: dict[str, AppSpec] = {a.package: a for a in (base["apps"] if base else ())}
        for i, app in enumerate(t.strings("apps")):
            if app not in self.apps:
                self.ctx.fail(("kinds", name, "apps", i), self._unknown("catalog app", app))
            apps[self.apps[app].package] = self.apps[app]
        interval = t.number("checkin_interval_s", None, positive=True)
        first_power = base["power"] if base else PowerStep(at_s=0.0, ac=True, battery=100.0)
        return KindSpec(
            count=count,
            share=share,
            serial_prefix=t.string("serial_prefix", None),
            kind=DeviceKind(
                name=name,
                manufacturer=t.string("manufacturer", hardware.get("manufacturer", "")),
                brand=t.string("brand", hardware.get("brand", "")),
                model=model,
                build=build,
                apps=tuple(apps.values()),
                power=self.power(t, first_power),
                sleep=self.windows(t, "sleep"),
                offline=self.windows(t, "offline"),
                network=t.string("network", base["network"] if base else "wifi", choices=NETWORKS),
                clock_skew_s=t.number("clock_skew_s", 0.0),
                push=t.boolean("push", True),
                sync_spread_s=t.number("sync_spread_s", 0.0, minimum=0.0, maximum=3600.0),
                group=t.string("group", None),
                checkin_interval_s=interval,
            ),
        )

    def build(self, t: Fields, base: BuildInfo) -> BuildInfo:
        changes: dict[str, Any] = {}
        for key in BUILD_KEYS:
            if not t.has(key):
                continue
            if key == "build_date":
                changes[key] = t.integer(key, minimum=0)
            elif key == "ab_update":
                changes[key] = t.boolean(key)
            else:
                changes[key] = t.string(key)
        return replace(base, **changes)

    def power(self, t: Fields, first: PowerStep) -> tuple[PowerStep, ...]:
        steps = [first]
        for i, raw in enumerate(t.array("power", [])):
            step = Fields(self.ctx, (*t.key, "power", i), raw, ("at_s", "ac", "battery"))
            at = step.number("at_s", minimum=0.0)
            if i and at <= steps[-1].at_s:
                step.fail("at_s", f"must be after the previous step's ({steps[-1].at_s:g})")
            battery = step.number("battery", steps[-1].battery, minimum=0.0, maximum=100.0)
            power = PowerStep(at_s=at, ac=step.boolean("ac"), battery=battery)
            if at == 0.0 and len(steps) == 1:
                steps[0] = power
            else:
                steps.append(power)
        return tuple(steps)

    def windows(self, t: Fields, name: str) -> tuple[Window, ...]:
        windows: list[Window] = []
        for i, raw in enumerate(t.array(name, [])):
            key = (*t.key, name, i)
            if (
                not isinstance(raw, list)
                or len(raw) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
            ):
                self.ctx.fail(key, "must be [start_s, end_s], two numbers")
            start, end = float(raw[0]), float(raw[1])
            if start < 0 or end <= start:
                self.ctx.fail(key, f"must have 0 <= start_s < end_s, not [{start:g}, {end:g}]")
            if windows and start < windows[-1].end_s:
                self.ctx.fail(key, "must start after the previous window ends")
            windows.append(Window(start_s=start, end_s=end))
        return tuple(windows)

    def snapshot(self, t: Fields) -> dict[str, Any]:
        """A `midm-agent snapshot` file: {snapshot_version: 1, hardware_info, build, power,
        network, sleeping, apps}, as the kind's defaults."""
        given = t.name("snapshot")
        path = self.folder / given

        def bad(why: str) -> NoReturn:
            t.fail("snapshot", f"{given}: not a midm-agent snapshot ({why})")

        try:
            document = json.loads(path.read_bytes())
        except OSError as exc:
            t.fail("snapshot", f"{given}: cannot read it ({exc.strerror})")
        except (ValueError, UnicodeDecodeError):
            bad("not JSON")
        if not isinstance(document, dict):
            bad("not a JSON object")
        if document.get("snapshot_version") != 1:
            bad("no snapshot_version 1")
        sections = (protocol.HARDWARE_SECTION, protocol.BUILD_SECTION)
        for section in sections:
            if not isinstance(document.get(section), dict):
                bad(f"no {section} object")
        if not isinstance(document.get("apps"), list):
            bad("no apps array")
        try:
            hardware = protocol.hardware_from_wire(document[protocol.HARDWARE_SECTION])
            build = protocol.build_from_wire(
                document[protocol.BUILD_SECTION], lambda attribute: attribute != "slot"
            )
            records = [protocol.app_from_wire(app) for app in document["apps"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            bad(f"unexpected field or value: {exc}")
        apps = []
        for record in records:
            if not isinstance(record.package_name, str) or not record.package_name:
                bad("an app without packageName")
            apps.append(
                AppSpec(
                    package=record.package_name,
                    version_code=int(record.version_code or 0),
                    version_name=str(record.version_name or ""),
                    label=str(record.label or ""),
                    cert_md5=str(record.cert_md5 or ""),
                )
            )
        power = document.get("power") or {}
        network = document.get("network")
        return {
            "hardware": hardware,
            "build": BuildInfo(**{k: v for k, v in build.items() if k in BUILD_KEYS}),
            "apps": apps,
            "power": PowerStep(
                at_s=0.0,
                ac=bool(power.get("ac", True)),
                battery=power.get("battery") if isinstance(power, dict) else None,
            ),
            "network": network if network in NETWORKS else "wifi",
        }

    # arrival -----------------------------------------------------------------------------

    def arrival(self, t: Fields) -> ArrivalSpec:
        process = ArrivalProcess(t.string("process", "poisson", choices=tuple(ArrivalProcess)))
        start = t.number("start_s", 0.0, minimum=0.0)
        if t.has("phases") == t.has("rate"):
            t.fail("rate", "give either rate (with ramp_s) or phases")
        if t.has("rate"):
            rate = t.number("rate", positive=True)
            phases = phases_of(rate, t.number("ramp_s", 0.0, minimum=0.0))
        else:
            if t.has("ramp_s"):
                t.fail("ramp_s", "goes with rate, not with phases")
            phases = self.phases(t)
        return ArrivalSpec(process=process, start_s=start, phases=phases)

    def phases(self, t: Fields) -> tuple[Phase, ...]:
        phases = []
        raws = t.array("phases")
        if not raws:
            t.fail("phases", "must list at least one phase")
        for i, raw in enumerate(raws):
            p = Fields(self.ctx, (*t.key, "phases", i), raw, ("duration_s", "rate", "from", "to"))
            duration = p.number("duration_s", minimum=0.0)
            if p.has("rate") and (p.has("from") or p.has("to")):
                p.fail("rate", "give either rate or from and to")
            if p.has("rate"):
                low = high = p.number("rate", minimum=0.0)
            else:
                low, high = p.number("from", minimum=0.0), p.number("to", minimum=0.0)
            phases.append(Phase(duration_s=duration, rate_from=low, rate_to=high))
        if phases[-1].rate_to <= 0:
            self.ctx.fail((*t.key, "phases", len(phases) - 1), "the last rate must be above 0")
        return tuple(phases)

    def check_arrivals(self, scenario: Scenario) -> None:
        """The scenario's own fleet must be expected to arrive within its duration."""
        last = time_of(scenario.arrival, max(scenario.devices - 1, 0))
        if last > scenario.duration_s:
            self.ctx.fail(
                ("arrival",),
                f"the last of {scenario.devices} devices is due at {last:.1f} s, after "
                f"duration_s ({scenario.duration_s:g})",
            )

    # timeline ----------------------------------------------------------------------------

    def faults(
        self, top: Fields, kinds: tuple[KindSpec, ...], duration: float
    ) -> tuple[Fault, ...]:
        known = [k.kind.name for k in kinds]
        faults = []
        for i, raw in enumerate(top.array("faults", [])):
            t = Fields(self.ctx, ("faults", i), raw, FAULT_KEYS)
            kind = FaultType(t.string("type", choices=tuple(FaultType)))
            start = t.number("at_s", minimum=0.0)
            end = t.number("until_s", math.inf)
            if end <= start:
                t.fail("until_s", f"must be after at_s ({start:g}), not {end:g}")
            if kind is FaultType.CLOCK_JUMP and t.has("until_s"):
                t.fail("until_s", "a clock jump happens at at_s and stays")
            for j, name in enumerate(t.strings("kinds")):
                if name not in known:
                    self.ctx.fail(("faults", i, "kinds", j), f"no kind is named {name!r}")
            for j, name in enumerate(t.strings("endpoints")):
                if name not in FAULT_ENDPOINTS:
                    self.ctx.fail(
                        ("faults", i, "endpoints", j),
                        f"must be one of {', '.join(FAULT_ENDPOINTS)}, not {name!r}",
                    )
            status = t.integer("status", 503)
            if status not in FAULT_STATUSES:
                t.fail("status", f"must be one of {', '.join(map(str, FAULT_STATUSES))}")
            needs = {
                FaultType.LATENCY: "latency_ms",
                FaultType.BANDWIDTH: "kbps",
                FaultType.CLOCK_JUMP: "jump_s",
            }.get(kind)
            if needs is not None and not t.has(needs):
                t.fail(needs, f"is required for a {kind} fault")
            faults.append(
                Fault(
                    type=kind,
                    start_s=start,
                    end_s=end,
                    kinds=frozenset(t.strings("kinds")) if t.has("kinds") else None,
                    endpoints=frozenset(t.strings("endpoints")) if t.has("endpoints") else None,
                    probability=t.number("probability", 1.0, minimum=0.0, maximum=1.0),
                    latency_s=t.number("latency_ms", 0.0, minimum=0.0, maximum=600_000.0) / 1000,
                    jitter_s=t.number("jitter_ms", 0.0, minimum=0.0, maximum=600_000.0) / 1000,
                    status=status,
                    retry_after_s=t.number("retry_after_s", None, minimum=0.0, maximum=86400.0),
                    at_fraction=t.number("at_fraction", 0.5, minimum=0.0, maximum=1.0),
                    bytes_per_s=t.number("kbps", 0.0, positive=True) * 1024
                    if t.has("kbps")
                    else 0.0,
                    jump_s=t.number(
                        "jump_s", 0.0, minimum=-10 * 365 * 86400.0, maximum=10 * 365 * 86400.0
                    ),
                )
            )
        del duration  # a fault past the run's end is allowed: it never acts
        return tuple(faults)

    def timeline(self, top: Fields, kinds: tuple[KindSpec, ...]) -> tuple[AdminAction, ...]:
        raws = top.array("timeline", [])
        entries = []
        for i, raw in enumerate(raws):
            key: Key = ("timeline", i)
            t = Fields(self.ctx, key, raw)
            action_name = t.string("action", choices=tuple(ActionKind))
            action = ActionKind(action_name)
            t = Fields(self.ctx, key, raw, ("at_s", "action", *ACTION_KEYS[action]))
            entries.append((t.number("at_s", minimum=0.0), i, action, t))
        entries.sort(key=lambda e: (e[0], e[1]))
        state = _Names(kinds)
        actions = [self.action(at, action, t, state) for at, _, action, t in entries]
        for spec in kinds:
            group = spec.kind.group
            if group is not None and group not in state.groups_at_start:
                self.ctx.fail(
                    ("kinds", spec.kind.name, "group"),
                    f"no create_group action at at_s = 0 creates {group!r} "
                    "(devices are saved in their group before they arrive)",
                )
        return tuple(actions)

    def action(self, at: float, action: ActionKind, t: Fields, names: _Names) -> AdminAction:
        args: dict[str, Any]
        if action is ActionKind.CREATE_GROUP:
            name = t.name("name")
            if name in names.groups:
                t.fail("name", f"group {name!r} is created twice")
            parent = t.string("parent", None)
            if parent is not None and parent not in names.groups:
                t.fail("parent", self._unknown("group created before", parent))
            names.groups.add(name)
            if at == 0:
                names.groups_at_start.add(name)
            args = {"name": name, "parent": parent, "enabled": t.boolean("enabled", True)}
        elif action is ActionKind.UPLOAD_APP:
            app = t.name("app")
            if app not in self.apps:
                t.fail("app", self._unknown("catalog app", app))
            if app in names.apps:
                t.fail("app", f"{app!r} is uploaded twice")
            names.apps.add(app)
            spec = self.apps[app]
            args = {
                "name": app,
                "package": spec.package,
                "version_code": spec.version_code,
                "version_name": spec.version_name,
                "label": spec.label,
            }
        elif action is ActionKind.UPLOAD_OTA:
            ota = t.name("ota")
            if ota not in self.otas:
                t.fail("ota", self._unknown("catalog image", ota))
            if ota in names.otas:
                t.fail("ota", f"{ota!r} is uploaded twice")
            names.otas.add(ota)
            args = dict(self.otas[ota])
        elif action is ActionKind.SAVE_PROFILE:
            name = t.name("name")
            if name in names.profiles:
                t.fail("name", f"profile {name!r} is saved twice")
            body = self.profile_body(t.table("body", PROFILE_KEYS, required=True), names, name)
            names.profiles.add(name)
            args = {"name": name, "body": body}
        elif action is ActionKind.EDIT_PROFILE:
            name = t.name("name")
            if name not in names.profiles:
                t.fail("name", self._unknown("profile saved before", name))
            changes = self.profile_body(t.table("changes", PROFILE_KEYS, required=True), names)
            args = {"name": name, "changes": changes}
        elif action is ActionKind.RESAVE_DEVICES:
            args = self.resave(t, names)
        elif action is ActionKind.RESTART_SERVER:
            args = {"down_s": t.number("down_s", 0.0, minimum=0.0, maximum=3600.0)}
        else:
            args = {}
        return AdminAction(at_s=at, action=action, args=freeze(args))

    def profile_body(self, t: Fields, names: _Names, name: str | None = None) -> dict[str, Any]:
        """Check the names a profile body refers to; the server checks the rest."""
        section = t.table("profile")
        if name is not None and section.has("name") and section.raw("name") != name:
            section.fail("name", f"is the action's name ({name!r}) or absent")
        scope = t.table("scope", ("group", "device"))
        for i, group in enumerate(scope.strings("group")):
            if group not in names.groups:
                self.ctx.fail(
                    (*scope.key, "group", i), self._unknown("group created before", group)
                )
        scope.strings("device")
        apps = t.table("apps")
        for i, raw in enumerate(apps.array("install", [])):
            entry = Fields(self.ctx, (*apps.key, "install", i), raw, ("app", *INSTALL_FLAGS))
            app = entry.name("app")
            if app not in names.apps:
                entry.fail("app", self._unknown("app uploaded before", app))
            for flag in INSTALL_FLAGS:
                entry.boolean(flag, None)
        for i, ota in enumerate(t.strings("otas")):
            if ota not in names.otas:
                self.ctx.fail((*t.key, "otas", i), self._unknown("image uploaded before", ota))
        body: dict[str, Any] = _plain(dict(t.data))
        if name is not None:
            body.setdefault("profile", {})["name"] = name
        return body

    def resave(self, t: Fields, names: _Names) -> dict[str, Any]:
        kind = t.string("kind", None)
        if kind is not None and kind not in names.kinds:
            t.fail("kind", self._unknown("kind", kind))
        if t.has("count") and t.has("share"):
            t.fail("share", "give either count or share")
        serials = t.strings("serials")
        if not (t.has("count") or t.has("share") or serials):
            t.fail("count", "give count, share or serials")
        return {
            "kind": kind,
            "count": t.integer("count", None, minimum=0),
            "share": t.number("share", None, minimum=0.0, maximum=1.0),
            "serials": serials,
        }

    # expectations ------------------------------------------------------------------------

    def expectations(self, t: Fields, profiles: set[str]) -> tuple[Expectation, ...]:
        found = []
        for name in t.data:
            expr = t.name(name)
            for match in _CONVERGENCE.finditer(expr):
                profile = match.group(1) if match.group(1) is not None else match.group(2)
                if profile not in profiles:
                    t.fail(name, self._unknown("profile of the timeline", profile))
            try:
                language.parse(expr, name=name, profiles=profiles)
            except language.ExpectationError as exc:
                where = "" if exc.column is None else f" (column {exc.column + 1})"
                t.fail(name, f"{exc.reason}{where}: {expr}")
            found.append(Expectation(name=name, expr=expr))
        return tuple(found)

    @staticmethod
    def _unknown(what: str, name: str) -> str:
        return f"no {what} is named {name!r}"


class _Names:
    """What the timeline has defined so far, in time order."""

    def __init__(self, kinds: tuple[KindSpec, ...]) -> None:
        self.kinds = {k.kind.name for k in kinds}
        self.groups: set[str] = set()
        self.groups_at_start: set[str] = set()
        self.apps: set[str] = set()
        self.otas: set[str] = set()
        self.profiles: set[str] = set()


def _plain(value: Any) -> Any:
    """TOML values as JSON values (dates and times as ISO-8601 text)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat().replace("+00:00", "Z")
    return value
