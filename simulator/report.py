"""A run's report (midm-api.md §9): report.json, the self-contained report.html, the summary.

`build()` turns the plan, the metrics snapshot and what the runner found at the end (devices,
consistency, the server's profile status) into the §9 dict, with the expectations checked on it.
The dict also keeps the mergeable snapshot (`snapshot`): `merge()` of several shards' reports
adds their histograms and counts exactly and checks the expectations again (which reports may be
merged is simulator/shards.py's `check()`). A shard of a run split N > 1 ways is built with
`judge=False`: its expectations are the merged report's to check. `write()` saves
report.json and report.html; `print_summary()` prints the summary table with rich.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from simulator import __version__, expectations, figures, report_html
from simulator.herd import herd
from simulator.metrics import SATURATED_LAG_MS, MetricsSnapshot
from simulator.metrics import merge as merge_snapshots
from simulator.plan import serials
from simulator.plan.model import Expectation, Plan

SCHEMA = "midm-sim-report/1"
JSON_NAME = "report.json"
HTML_NAME = "report.html"
UNTRUSTWORTHY = "latencies are not trustworthy"


class ReportError(ValueError):
    """Reports that cannot be merged (different runs, not a report)."""


def build(
    plan: Plan,
    snapshot: MetricsSnapshot,
    *,
    target: str,
    started: datetime | str,
    duration_s: float,
    devices: Mapping[str, int],
    consistency: Mapping[str, Any] | None = None,
    server_status: Mapping[str, Mapping[str, Any]] | None = None,
    events: Mapping[str, int] | None = None,
    shard: tuple[int, int] = (0, 1),
    shard_info: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
    partial: bool = False,
    judge: bool = True,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The §9 report of one run (or shard). `devices` {planned, enrolled, failed, saved_twice,
    ...} (planned defaults to the plan's); `consistency` {checked, mismatches [{serial, field,
    device, server}]}; `server_status` profile/status counts by profile name (or uuid): its
    `scoped` is the convergence's denominator; `events` e.g. {lost, duplicated}; `shard` (index,
    count) and `shard_info` more keys of `shard` (run_id, t0, ...); `partial`: the run was
    stopped before its duration (Ctrl-C); `judge` False: the expectations are not checked (a
    shard's: merge checks them); `warnings` added to the report's own."""
    return assemble(
        scenario={
            "name": plan.scenario,
            "sha256": plan.scenario_sha256,
            "plan_hash": plan.plan_hash(),
            "plan": plan.to_json(),
        },
        checks=plan.expectations if judge else (),
        seed=plan.seed,
        snapshot=snapshot,
        target=target,
        started=started if isinstance(started, str) else started.isoformat(),
        duration_s=duration_s,
        devices={"planned": len(plan.devices), **devices},
        consistency=consistency,
        server_status=server_status,
        events=events,
        shard={"index": shard[0], "count": shard[1], **(shard_info or {})},
        versions=versions,
        partial=partial,
        warnings=warnings,
    )


def assemble(
    *,
    scenario: Mapping[str, Any],
    checks: Iterable[expectations.Named],
    seed: int,
    snapshot: MetricsSnapshot,
    target: str,
    started: str,
    duration_s: float,
    devices: Mapping[str, int],
    consistency: Mapping[str, Any] | None,
    server_status: Mapping[str, Mapping[str, Any]] | None,
    events: Mapping[str, int] | None,
    shard: Mapping[str, Any],
    versions: Mapping[str, str] | None,
    partial: bool,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """`build()` from JSON parts (what `merge()` has of a plan)."""
    generator = _generator(snapshot, duration_s)
    shared = serials.duplicates(str(d[1]) for d in (scenario.get("plan") or {}).get("devices", ()))
    shared_warning = serials.warning(shared)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "scenario": dict(scenario),
        "seed": seed,
        "shard": dict(shard),
        "versions": {**_versions(), **(versions or {})},
        "target": target,
        "started": started,
        "duration_s": round(duration_s, 3),
        "time_scale": snapshot.time_scale,
        "partial": partial,
        "devices": {**devices, "duplicate_serials": serials.duplicate_devices(shared)},
        "requests": _requests(snapshot),
        "timeline": _timeline(snapshot, duration_s),
        "convergence": _convergence(snapshot, server_status or {}),
        "generator": generator,
        "consistency": {
            "checked": int((consistency or {}).get("checked", 0)),
            "mismatches": list((consistency or {}).get("mismatches", [])),
        },
        "events": {"queued": snapshot.events_queued, **(events or {})},
        "warnings": [
            *_warnings(generator, partial),
            *([shared_warning] if shared_warning else []),
            *warnings,
        ],
    }
    figures_of_herd = herd(scenario.get("plan") or {}, report["timeline"], snapshot.time_scale)
    if figures_of_herd is not None:
        report["herd"] = figures_of_herd
    report["expectations"] = expectations.check(checks, report)
    report["snapshot"] = snapshot.to_json()
    return report


def _versions() -> dict[str, str]:
    found = {"midm-sim": __version__, "python": platform.python_version()}
    for package in ("aiohttp", "hdrhistogram"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # pragma: no cover - both are dependencies
            continue
    return found


def _requests(snapshot: MetricsSnapshot) -> dict[str, Any]:
    return {
        key: {
            "count": entry.count,
            "errors": dict(sorted(entry.errors.items())),
            "latency_ms": figures.latency_ms(figures.decode(entry.hdr)),
            "hdr": entry.hdr,
        }
        for key, entry in sorted(snapshot.requests.items(), key=lambda item: _order(item[0]))
    }


def _order(key: str) -> tuple[int, int, str]:
    """Device endpoints in the protocol's order, then others, then admin calls."""
    known = figures.DEVICE_ENDPOINTS
    rank = known.index(key) if key in known else len(known)
    return (figures.is_admin(key), rank, key)


def _timeline(snapshot: MetricsSnapshot, duration_s: float) -> list[dict[str, Any]]:
    """One row a second of the run (seconds after its duration, the shutdown, are left out)."""
    return [
        {
            "t": row.t,
            "rps": row.requests,
            "errors": row.errors,
            "p99_ms": figures.percentile_ms(figures.decode(row.hdr), 99.0)
            if row.requests
            else None,
            "websockets": row.websockets,
        }
        for row in snapshot.timeline
        if row.t < duration_s
    ]


def _convergence(
    snapshot: MetricsSnapshot, server_status: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Per profile (by name): from its first save, each device's first `applied` event."""
    result: dict[str, Any] = {}
    for uuid in sorted(set(snapshot.saves) | set(snapshot.profiles)):
        save = snapshot.saves.get(uuid)
        name, saved_at = (uuid, 0.0) if save is None else (save.name, save.at_s)
        progress = snapshot.profiles.get(uuid)
        applied = progress.applied if progress else {}
        server = server_status.get(name) or server_status.get(uuid)
        scoped = len(progress.seen) if progress else 0
        if server is not None and isinstance(server.get("scoped"), int):
            scoped = server["scoped"]
        figure = figures.convergence(
            (t - saved_at for t in applied.values()),
            scoped=scoped,
            failed=len(set(progress.failed) - set(applied)) if progress else 0,
            deferred=len(progress.deferred) if progress else 0,
        )
        entry = figure.to_json()
        entry["uuid"] = uuid
        entry["saved_at_s"] = round(saved_at, 3)
        if server is not None:
            entry["server"] = {k: v for k, v in server.items() if isinstance(v, int | float)}
        result[name] = entry
    return result


def _generator(snapshot: MetricsSnapshot, duration_s: float) -> dict[str, Any]:
    g = snapshot.generator
    return {
        "cpu_s": g.cpu_s,
        "cpu_share": round(g.cpu_s / duration_s, 3) if duration_s > 0 else None,
        "rss_mb": g.rss_mb,
        "send_lag_ms": _lag(figures.latency_ms(figures.decode(g.send_lag_hdr))),
        "lateness_ms": _lag(figures.latency_ms(figures.decode(g.lateness_hdr))),
        "saturated": g.saturated,
        "processes": g.processes,
    }


def _lag(values: Mapping[str, float | None]) -> dict[str, float | None]:
    return {key: values[key] for key in ("p50", "p99", "max")}


def _warnings(generator: Mapping[str, Any], partial: bool) -> list[str]:
    warnings = []
    if generator["saturated"]:
        p99 = generator["send_lag_ms"]["p99"] or generator["lateness_ms"]["p99"]
        warnings.append(
            f"the generator was saturated (send-lag p99 {p99} ms > {SATURATED_LAG_MS:g} ms): "
            f"its {UNTRUSTWORTHY}"
        )
    if partial:
        warnings.append("the run was stopped before its duration: the figures are partial")
    return warnings


# --- merging shards ---------------------------------------------------------------------------


def merge(
    reports: Sequence[Mapping[str, Any]],
    *,
    warnings: Sequence[str] = (),
    missing: Sequence[int] = (),
) -> dict[str, Any]:
    """One report of the shards of one run (same plan hash and seed): histograms and counts
    added exactly (midm-sim merge), devices, events and the fleet's counts summed, mismatches
    joined, the admin timeline and the server's profile scopes taken from the shard that ran
    them (shard 0), expectations checked again on the merged figures. `warnings` (from
    simulator.shards.check) are added; `missing` shard indexes make the report partial."""
    if not reports:
        raise ReportError("no reports to merge")
    first = reports[0]
    try:
        runs = [(str(r["scenario"]["plan_hash"]), r["seed"]) for r in reports]
        snapshots = [MetricsSnapshot.from_json(r["snapshot"]) for r in reports]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"not a {SCHEMA} report with a snapshot ({exc})") from exc
    other = next((run for run in runs if run != runs[0]), None)
    if other is not None:
        raise ReportError(
            f"the reports are of different runs (plan hash {runs[0][0][:12]}, seed {runs[0][1]} "
            f"vs plan hash {other[0][:12]}, seed {other[1]})"
        )
    try:
        snapshot = merge_snapshots(snapshots)
    except ValueError as exc:
        raise ReportError(str(exc)) from exc
    plan = first["scenario"].get("plan", {})
    checks = [
        Expectation(name=str(e["name"]), expr=str(e["expr"])) for e in plan.get("expectations", [])
    ]
    server_status: dict[str, Mapping[str, Any]] = {}
    for r in reports:
        for name, entry in r.get("convergence", {}).items():
            if isinstance(entry.get("server"), Mapping):
                server_status.setdefault(name, entry["server"])
    mismatches = [m for r in reports for m in r.get("consistency", {}).get("mismatches", [])]
    extra_events = [
        {k: v for k, v in r.get("events", {}).items() if k != "queued"} for r in reports
    ]
    shards = [r.get("shard") or {} for r in reports]
    count = max((int(s.get("count") or 1) for s in shards), default=1)
    run_ids = {s.get("run_id") for s in shards}
    shard: dict[str, Any] = {
        "index": None,
        "count": count if count > 1 else len(reports),
        "merged": shards,
    }
    if len(run_ids) == 1 and None not in run_ids:
        shard["run_id"] = run_ids.pop()
    if missing:
        shard["missing"] = list(missing)
    merged = assemble(
        scenario=first["scenario"],
        checks=checks,
        seed=first["seed"],
        snapshot=snapshot,
        target=first["target"],
        started=min(str(r["started"]) for r in reports),
        duration_s=max(float(r["duration_s"]) for r in reports),
        devices=figures.sum_counts(r.get("devices", {}) for r in reports),
        consistency={
            "checked": sum(r.get("consistency", {}).get("checked", 0) for r in reports),
            "mismatches": mismatches,
        },
        server_status=server_status,
        events=figures.sum_counts(extra_events),
        shard=shard,
        versions=first.get("versions"),
        partial=any(r.get("partial", False) for r in reports),
        warnings=warnings,
    )
    if missing:
        merged["partial"] = True
    _merge_extras(merged, reports)
    return merged


def _merge_extras(merged: dict[str, Any], reports: Sequence[Mapping[str, Any]]) -> None:
    """What runner.execute adds beside build(): the fleet's counts, the collector's pauses,
    the admin timeline, the embedded server's CPU."""
    fleets = [r["fleet"] for r in reports if isinstance(r.get("fleet"), Mapping)]
    if fleets:
        lags = [f.get("start_lag_ms") or {} for f in fleets]
        merged["fleet"] = {
            # shards' arrival lags are not mergeable percentiles: the worst shard's (an upper
            # bound of the run's)
            "start_lag_ms": {
                key: max((float(lag.get(key) or 0.0) for lag in lags), default=0.0)
                for key in ("p50", "p99", "max")
            },
            **{
                key: sum(int(f.get(key) or 0) for f in fleets)
                for key in ("checkins", "checkin_failures", "consistency_settled")
            },
            "agent_errors": [e for f in fleets for e in f.get("agent_errors") or []][:20],
        }
    gcs = [r["generator"]["gc"] for r in reports if isinstance(r["generator"].get("gc"), Mapping)]
    if gcs:
        merged["generator"]["gc"] = {
            "freezes": sum(int(g.get("freezes") or 0) for g in gcs),
            "collections": [sum(c) for c in zip(*(g["collections"] for g in gcs), strict=True)],
            "max_pause_ms": [max(p) for p in zip(*(g["max_pause_ms"] for g in gcs), strict=True)],
            "frozen_objects": sum(int(g.get("frozen_objects") or 0) for g in gcs),
        }
    timeline = [a for r in reports for a in r.get("admin_timeline") or []]
    if timeline:
        merged["admin_timeline"] = timeline
    servers = [r["server"] for r in reports if isinstance(r.get("server"), Mapping)]
    if servers:
        cpu = sum(float(s.get("cpu_s") or 0.0) for s in servers)
        duration = float(merged["duration_s"])
        merged["server"] = {
            "process": servers[0].get("process"),
            "cpu_s": round(cpu, 3),
            "cpu_share": round(cpu / duration, 3) if duration > 0 else None,
        }
    merged["snapshot"] = merged.pop("snapshot")  # keep the snapshot last, as build() does


# --- files and the terminal -------------------------------------------------------------------


def write(directory: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """report.json and report.html in `directory` (made if missing); their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / JSON_NAME, directory / HTML_NAME
    json_path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    html_path.write_text(report_html.render(report), encoding="utf-8")
    return json_path, html_path


def read(path: Path) -> dict[str, Any]:
    """A report.json (or the directory holding one)."""
    if path.is_dir():
        path = path / JSON_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a readable report ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not a {SCHEMA} report")
    return data


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary(report: Mapping[str, Any]) -> Group:
    """The summary printed at the end: requests per endpoint, convergence, expectations."""
    requests = Table(
        title="Requests (latency from the intended send time, ms)", title_justify="left"
    )
    for column in ("endpoint", "count", "errors", "p50", "p90", "p99", "p99.9", "max"):
        requests.add_column(column, justify="left" if column == "endpoint" else "right")
    for key, entry in report.get("requests", {}).items():
        latency = entry["latency_ms"]
        errors = ", ".join(f"{c} {n}" for c, n in entry["errors"].items()) or "0"
        requests.add_row(
            key,
            _fmt(entry["count"]),
            errors,
            *(_fmt(latency[p]) for p in ("p50", "p90", "p99", "p999", "max")),
        )
    parts: list[Any] = [requests]
    convergence = report.get("convergence", {})
    if convergence:
        table = Table(title="Convergence (seconds after the save)", title_justify="left")
        for column in ("profile", "scoped", "applied", "failed", "deferred", "t50", "t90", "t99"):
            table.add_column(column, justify="left" if column == "profile" else "right")
        for name, c in convergence.items():
            table.add_row(
                name,
                *(_fmt(c[k]) for k in ("scoped", "applied", "failed", "deferred")),
                *(_fmt(c[k]) for k in ("t50_s", "t90_s", "t99_s")),
            )
        parts.append(table)
    devices = report.get("devices", {})
    g = report.get("generator", {})
    lag = g.get("send_lag_ms", {})
    parts.append(
        Text(
            f"devices: {', '.join(f'{k} {_fmt(v)}' for k, v in devices.items())}; "
            f"generator: cpu {_fmt(g.get('cpu_s'))} s, rss {_fmt(g.get('rss_mb'))} MB, "
            f"send lag p50 {_fmt(lag.get('p50'))} / p99 {_fmt(lag.get('p99'))} ms; "
            f"consistency mismatches: {len(report.get('consistency', {}).get('mismatches', []))}"
        )
    )
    herd_figures = report.get("herd")
    if isinstance(herd_figures, Mapping):
        parts.append(
            Text(
                f"herd after the outage: peak {_fmt(herd_figures.get('peak_rps'))} requests/s, "
                f"steady {_fmt(herd_figures.get('steady_rps'))} requests/s, "
                f"ratio {_fmt(herd_figures.get('ratio'))}"
            )
        )
    for warning in report.get("warnings", []):
        parts.append(Text(f"WARNING: {warning}", style="bold red"))
    checks = report.get("expectations", [])
    if checks:
        table = Table(title="Expectations", title_justify="left")
        for column in ("", "name", "expression", "observed"):
            table.add_column(column)
        for check in checks:
            mark = Text("PASS", style="green") if check["passed"] else Text("FAIL", style="red")
            table.add_row(mark, check["name"], check["expr"], json.dumps(check["observed"]))
        parts.append(table)
    return Group(*parts)


def print_summary(report: Mapping[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(summary(report))
