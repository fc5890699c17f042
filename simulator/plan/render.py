"""The expanded plan as text: what `midm-sim validate` prints (pure; no terminal, no colour).

Sections: the scenario line (name, hashes, seed, duration, time scale), the fleet by kind, the
arrivals per second, the admin timeline and the expectations; the plan hash last.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from simulator.plan.model import ActionKind, AdminAction, DeviceKind, Plan
from simulator.plan.serials import duplicates, warning

ARRIVAL_COLUMNS = 12  # seconds of arrivals shown per line


def render(plan: Plan) -> str:
    lines = [
        f"scenario {plan.scenario}  (file sha256 {plan.scenario_sha256[:12]})",
        f"  seed {plan.seed}, duration {plan.duration_s:g} s, time scale {plan.time_scale:g}"
        + (f" ({plan.duration_s / plan.time_scale:.1f} s real)" if plan.time_scale != 1 else ""),
    ]
    if plan.description:
        lines.append(f"  {plan.description}")
    lines += ["", f"fleet: {len(plan.devices):,} devices"]
    by_kind = Counter(d.kind for d in plan.devices)
    width = max((len(name) for name in plan.kinds), default=4)
    for name, kind in plan.kinds.items():
        lines.append(f"  {name:<{width}}  {by_kind[name]:>7,}  {_kind_line(kind)}")
        lines.extend(f"  {'':<{width}}           {extra}" for extra in _kind_extras(kind))
    shared = warning(duplicates(d.serial for d in plan.devices))
    if shared is not None:
        lines.append(f"  WARNING: {shared}")
    lines += ["", *_arrivals(plan)]
    lines += ["", f"timeline: {len(plan.timeline)} admin actions"]
    for action in plan.timeline:
        late = "  (after the end)" if action.at_s >= plan.duration_s else ""
        lines.append(f"  {action.at_s:>8.1f} s  {action.action:<15} {_action_text(action)}{late}")
    lines += ["", f"expectations: {len(plan.expectations)}"]
    width = max((len(e.name) for e in plan.expectations), default=4)
    lines.extend(f"  {e.name:<{width}}  {e.expr}" for e in plan.expectations)
    lines += ["", f"plan hash {plan.plan_hash()}"]
    return "\n".join(lines) + "\n"


def _kind_line(kind: DeviceKind) -> str:
    maker = " ".join(part for part in (kind.manufacturer, kind.model) if part)
    build = kind.build.fingerprint or "(no fingerprint)"
    parts = [maker, build, kind.network, "push" if kind.push else "no push"]
    if kind.group:
        parts.append(f"group {kind.group}")
    return "  ".join(parts)


def _kind_extras(kind: DeviceKind) -> list[str]:
    extras = []
    if kind.apps:
        extras.append("apps " + ", ".join(f"{a.package} {a.version_code}" for a in kind.apps))
    first = kind.power[0] if kind.power else None
    if len(kind.power) > 1 or (first is not None and not first.ac):
        steps = [
            f"{p.at_s:g}s {'AC' if p.ac else 'battery'}"
            + ("" if p.battery is None else f" {p.battery:g}%")
            for p in kind.power
        ]
        extras.append("power " + " -> ".join(steps))
    for name, windows in (("sleep", kind.sleep), ("offline", kind.offline)):
        if windows:
            extras.append(f"{name} " + ", ".join(f"{w.start_s:g}-{w.end_s:g}s" for w in windows))
    if kind.clock_skew_s:
        extras.append(f"clock skew {kind.clock_skew_s:+g} s")
    if kind.checkin_interval_s is not None:
        extras.append(f"check-in every {kind.checkin_interval_s:g} s")
    return extras


def _arrivals(plan: Plan) -> list[str]:
    if not plan.devices:
        return ["arrivals: none"]
    first, last = plan.devices[0].arrive_s, plan.devices[-1].arrive_s
    lines = [f"arrivals: {first:.2f} s to {last:.2f} s (devices starting in each second)"]
    per_second = Counter(int(d.arrive_s) for d in plan.devices)
    seconds = range(math.floor(first), int(last) + 1)
    row: list[str] = []
    for second in seconds:
        row.append(f"{per_second[second]:>5}")
        if len(row) == ARRIVAL_COLUMNS or second == seconds[-1]:
            start = second - len(row) + 1
            lines.append(f"  {start:>5} s {''.join(row)}")
            row = []
    late = sum(1 for d in plan.devices if d.arrive_s >= plan.duration_s)
    if late:
        lines.append(f"  {late:,} devices are due after the end ({plan.duration_s:g} s)")
    return lines


def _action_text(action: AdminAction) -> str:
    args = action.args
    kind = action.action
    if kind is ActionKind.CREATE_GROUP:
        parent = args.get("parent")
        return str(args["name"]) + (f" (child of {parent})" if parent else "")
    if kind is ActionKind.UPLOAD_APP:
        return f"{args['name']} ({args['package']} {args['version_code']})"
    if kind is ActionKind.UPLOAD_OTA:
        what = "partial" if args.get("pre_build") else "full"
        return f"{args['name']} ({what} -> {args['post_build']})"
    if kind is ActionKind.SAVE_PROFILE:
        return f"{args['name']} ({_profile_text(args['body'])})"
    if kind is ActionKind.EDIT_PROFILE:
        return f"{args['name']} (changes: {_profile_text(args['changes'])})"
    if kind is ActionKind.RESAVE_DEVICES:
        serials = list(args.get("serials") or ())
        shown = ", ".join(serials[:3]) + (", ..." if len(serials) > 3 else "")
        return f"{len(serials)} devices ({shown})" if serials else "no devices"
    if kind is ActionKind.RESTART_SERVER:
        return f"the embedded server, down {float(args.get('down_s') or 0.0):g} s"
    return "the admin's access token"


def _profile_text(body: Mapping[str, Any]) -> str:
    parts = []
    if body.get("isGlobal"):
        parts.append("global")
    scope = body.get("scope") or {}
    if scope.get("group"):
        parts.append("groups " + ", ".join(scope["group"]))
    if scope.get("device"):
        parts.append(f"{len(scope['device'])} devices")
    installs = (body.get("apps") or {}).get("install") or ()
    if installs:
        parts.append("install " + ", ".join(str(i.get("app")) for i in installs))
    if body.get("otas"):
        parts.append("images " + ", ".join(body["otas"]))
    settings = dict(body.get("settings") or {})
    otas = settings.pop("otas", None) or {}
    flags = [
        key if value else f"no {key}" for key, value in otas.items() if isinstance(value, bool)
    ]
    if flags:
        parts.append(", ".join(flags))
    if settings:
        parts.append("settings " + ", ".join(sorted(settings)))
    profile = body.get("profile") or {}
    if profile.get("wakeToApply"):
        parts.append("wakeToApply")
    return "; ".join(parts) or "-"
