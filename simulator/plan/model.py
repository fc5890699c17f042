"""The expanded plan of one simulator run: the fleet, each device's schedule, the admin timeline.

`expand(scenario, seed)` (simulator/plan/expand.py) makes a Plan; the fleet, the timeline and the
report read it. Pure values: frozen, slotted, keyword-only dataclasses, no I/O. Times are
scenario seconds from the run's start (the runner divides by the time scale for real time).
`Plan.to_json()` is what report.json holds under `scenario.plan`; `plan_hash()` is the sha256 of
its canonical JSON (sorted keys, no spaces), so the same scenario and seed give the same hash.

AdminAction args, per ActionKind (names are the scenario's; the timeline resolves them to uuids):
- create_group: `name` str, `parent` str | None (a group created earlier), `enabled` bool.
- upload_app: `name` str (how profiles refer to it; the App's `name`), `package` str,
  `version_code` int, `version_name` str, `label` str (a generated, signed APK).
- upload_ota: `name` str, `post_build` str (fingerprint after), `pre_build` str | None (set: a
  partial image from that fingerprint; None: full), `build_date` int (epoch s), `device_id`,
  `product_id`, `sku_id` str, `ab_update` bool, `type` "base" | "region", `size_kb` int (payload).
- save_profile: `name` str, `body` mapping: the protocol's Profile body (§5) with names in place of
  uuids: `scope.group[]` group names, `apps.install[].app` an app's name (instead of `uuid`),
  `otas[]` image names; `scope.device[]` serials as they are. `profile.name` is `name`.
- edit_profile: `name` str (a profile saved earlier), `changes` mapping deep-merged into the
  loaded profile (objects merged key by key, lists and values replaced; names as in save_profile).
- resave_devices: `serials` tuple[str, ...] (planned devices saved again: the server resets them
  and revokes their device tokens; each keeps its kind's group).
- revoke_tokens: no args: the admin's access token is revoked (logout) and the timeline logs in
  again (device tokens are revoked by re-saving devices: resave_devices).
- restart_server: `down_s` float (scenario seconds it stays down): the embedded server is stopped
  (SIGTERM) and started again on the same port and database (simulator/embedded.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.models import BuildInfo
from simulator.plan.faults import Fault


class ActionKind(StrEnum):
    CREATE_GROUP = "create_group"
    UPLOAD_APP = "upload_app"
    UPLOAD_OTA = "upload_ota"
    SAVE_PROFILE = "save_profile"
    EDIT_PROFILE = "edit_profile"
    RESAVE_DEVICES = "resave_devices"
    REVOKE_TOKENS = "revoke_tokens"
    RESTART_SERVER = "restart_server"


# A kind's build is the agent's own BuildInfo; a scenario sets these of its fields (`slot` is the
# simulated platform's to report, not the scenario's).
BUILD_KEYS = (
    "fingerprint", "build_date", "display_id", "sdk", "device_id", "product_id", "sku_id",
    "customer_id", "ab_update", "region",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSpec:
    """An installed app record (the protocol's AppInfo)."""

    package: str
    version_code: int
    version_name: str = ""
    label: str = ""
    cert_md5: str = ""  # "" = unknown: any signer may update it


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerStep:
    """From `at_s` on, the device is on AC (or not) with this battery level (None: no battery)."""

    at_s: float
    ac: bool
    battery: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """[start_s, end_s) in scenario seconds."""

    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceKind:
    """What every device of one kind shares. `power` is ordered by `at_s` and starts at 0;
    `sleep`/`offline` windows are ordered and do not overlap; `group` is a group name of the
    timeline (devices are saved in it) or None; `checkin_interval_s` None: the agent's default
    until the server says."""

    name: str
    manufacturer: str
    brand: str
    model: str
    build: BuildInfo
    apps: tuple[AppSpec, ...] = ()
    power: tuple[PowerStep, ...] = (PowerStep(at_s=0.0, ac=True, battery=100.0),)
    sleep: tuple[Window, ...] = ()
    offline: tuple[Window, ...] = ()
    network: str = "wifi"  # wifi, ethernet, mobile, none
    clock_skew_s: float = 0.0
    push: bool = True
    sync_spread_s: float = 0.0  # a push `sync` is answered within this many seconds
    group: str | None = None
    checkin_interval_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedDevice:
    """One device: `arrive_s` is its intended start (open model), `seed` its own rng seed."""

    index: int
    serial: str
    kind: str
    arrive_s: float
    seed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminAction:
    """One admin step at `at_s`; `args` per kind as in the module docstring (JSON values)."""

    at_s: float
    action: ActionKind
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """A named check on the report; `expr` is the text as given (simulator/expectations.py)."""

    name: str
    expr: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything a run does, decided before it starts. `devices` ordered by `arrive_s` then
    `index`; `timeline` ordered by `at_s` (ties keep the scenario's order)."""

    scenario: str
    scenario_sha256: str
    seed: int
    duration_s: float
    time_scale: float
    kinds: Mapping[str, DeviceKind]
    devices: tuple[PlannedDevice, ...]
    timeline: tuple[AdminAction, ...]
    expectations: tuple[Expectation, ...]
    description: str = ""
    faults: tuple[Fault, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON values (report.json `scenario.plan`)."""
        return {
            "scenario": self.scenario,
            "description": self.description,
            "scenario_sha256": self.scenario_sha256,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "time_scale": self.time_scale,
            "kinds": {name: _kind_json(kind) for name, kind in sorted(self.kinds.items())},
            "devices": [[d.index, d.serial, d.kind, d.arrive_s, d.seed] for d in self.devices],
            "device_columns": ["index", "serial", "kind", "arrive_s", "seed"],
            "timeline": [
                {"at_s": a.at_s, "action": str(a.action), "args": json_value(a.args)}
                for a in self.timeline
            ],
            "expectations": [{"name": e.name, "expr": e.expr} for e in self.expectations],
            **({"faults": [f.to_json() for f in self.faults]} if self.faults else {}),
        }

    def plan_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of `to_json()`."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def devices_of(self, kind: str) -> tuple[PlannedDevice, ...]:
        return tuple(d for d in self.devices if d.kind == kind)


def _kind_json(kind: DeviceKind) -> dict[str, Any]:
    b = kind.build
    return {
        "name": kind.name,
        "manufacturer": kind.manufacturer,
        "brand": kind.brand,
        "model": kind.model,
        "build": {key: getattr(b, key) for key in BUILD_KEYS},
        "apps": [
            {
                "package": a.package,
                "version_code": a.version_code,
                "version_name": a.version_name,
                "label": a.label,
                "cert_md5": a.cert_md5,
            }
            for a in kind.apps
        ],
        "power": [{"at_s": p.at_s, "ac": p.ac, "battery": p.battery} for p in kind.power],
        "sleep": [[w.start_s, w.end_s] for w in kind.sleep],
        "offline": [[w.start_s, w.end_s] for w in kind.offline],
        "network": kind.network,
        "clock_skew_s": kind.clock_skew_s,
        "push": kind.push,
        "sync_spread_s": kind.sync_spread_s,
        "group": kind.group,
        "checkin_interval_s": kind.checkin_interval_s,
    }


def json_value(value: Any) -> Any:
    """A plain JSON value: mappings (MappingProxyType too) -> dicts, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value
