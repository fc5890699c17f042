"""Shards of one run against one target: who does what, how they start together, how they merge.

Decisions [ours]:
- Shard 0 runs the whole admin timeline, as a single run does: it generates and uploads the
  artifacts, runs the actions at 0 s, saves *every* planned device in bulk (1,000 a request),
  then runs the rest of the timeline (profiles, edits, re-saves, token revocations). The other
  shards only run their agents (simulator/plan/shards.py picks them), which only register. So
  the target sees the admin side of a sharded run exactly as of one run, no shard resolves
  another's names, and no agent can race its own save. The cost: shard 0's set-up saves the
  whole fleet (on the reference server well under a second per 10,000 devices).
- Convergence needs no names in the other shards: agents report profile events by uuid, and
  `midm-sim merge` takes the names, save times and the server's scope counts from shard 0's
  report. A shard's own report (count > 1) therefore checks no expectations; merge does, on the
  merged figures; a shard exits 0 when its part ran (3 when it could not, 130 interrupted).
- Start together: when its set-up is done, shard 0 creates a disabled group on the target named
  `midm-sim run <run id> t0=<epoch ms> clock=<ms>`: the run's t0 (START_MARGIN_S ahead, so that
  waiting shards see it in time) on the wall clock, and the agents' simulated wall clock at t0.
  Other shards poll the group list every RENDEZVOUS_POLL_S until that group appears (at most
  RENDEZVOUS_TIMEOUT_S: then exit 3), then schedule their fleets from the same t0, their metrics
  counted from it too: the shards' timelines and convergence times line up second by second
  (across machines as well as their clocks agree, NTP in a cluster). A shard that starts late
  starts its overdue devices at once (their start lag says so). The run id tells this run's
  marker from an earlier run's: `--workers` makes one; a Kubernetes Job passes its own uid; by
  hand, give every shard the same `--run-id`. The marker group stays on the target (the admin
  API deletes no group); the rendezvous requests are not counted in the report's requests.
- Merge (`check()`): the reports must be of one plan (same plan hash: else exit 2 naming both
  hashes), shards of one run id and one count, each index once (a duplicate is refused naming
  both files); a missing index is refused unless `--allow-missing` (the merged report is then
  partial and says which shards are missing). Several whole-run reports of one plan (count 1)
  may be added together as before; a merged report is refused as an input (merge its shards).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.clock import SystemClock, Waitable
from agent.transport.base import no_observer
from simulator import report
from simulator.admin import AdminClient
from simulator.errors import RunError, SettingsError
from simulator.plan.shards import Shard
from simulator.report import ReportError

log = structlog.get_logger("simulator.shards")
START_MARGIN_S = 2.0  # shard 0 sets t0 this far ahead of its marker (real seconds)
RENDEZVOUS_POLL_S = 0.5
RENDEZVOUS_TIMEOUT_S = 900.0  # pods may wait for a node and an image pull
SHARD_FOLDER = "shard-{index}"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MARKER = re.compile(r"midm-sim run (?P<run>\S+) t0=(?P<t0>\d+) clock=(?P<clock>\d+)")


def check_run_id(text: str) -> str:
    """A run id: 1-64 letters, digits, `.`, `_`, `-` (a Kubernetes uid is one)."""
    if not _RUN_ID.fullmatch(text):
        raise SettingsError(
            f"--run-id {text!r}: use 1 to 64 letters, digits, '.', '_' or '-' "
            "(the same for every shard of one run)"
        )
    return text


def shard_folder(directory: Path, shard: Shard) -> Path:
    """Where a shard of a run writes its report: `<--report>/shard-<I>`."""
    return directory / SHARD_FOLDER.format(index=shard.index)


# -- the rendezvous ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """The run's t0: wall-clock epoch ms, and the agents' simulated wall clock then (ms)."""

    t0_ms: int
    clock_ms: int


def marker_name(run_id: str, start: Start) -> str:
    return f"midm-sim run {run_id} t0={start.t0_ms} clock={start.clock_ms}"


def parse_marker(name: str, run_id: str) -> Start | None:
    """The Start a marker group of run `run_id` names (None: not such a marker)."""
    match = _MARKER.fullmatch(name)
    if match is None or match["run"] != run_id:
        return None
    return Start(t0_ms=int(match["t0"]), clock_ms=int(match["clock"]))


def latest_start(groups: Iterable[Mapping[str, Any]], run_id: str) -> Start | None:
    """The latest t0 among the groups' markers of `run_id` (a restarted shard 0 made another)."""
    found: Start | None = None
    for group in groups:
        profile = group.get("profile")
        name = profile.get("name") if isinstance(profile, Mapping) else None
        start = parse_marker(name, run_id) if isinstance(name, str) else None
        if start is not None and (found is None or start.t0_ms > found.t0_ms):
            found = start
    return found


@contextmanager
def unobserved(admin: AdminClient) -> Iterator[None]:
    """The admin client's requests are not reported to the metrics meanwhile."""
    observer, admin.observer = admin.observer, no_observer
    try:
        yield
    finally:
        admin.observer = observer


async def publish(admin: AdminClient, run_id: str, start: Start) -> None:
    """Shard 0: the set-up is done; the run starts at `start`."""
    with unobserved(admin):
        await admin.save_group(marker_name(run_id, start), enabled=False)
    log.info("shards.published", run_id=run_id, t0_ms=start.t0_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendezvous:
    start: Start | None  # None: stopped (Ctrl-C) before shard 0 was ready
    polls: int
    waited_s: float


async def wait_for_start(
    admin: AdminClient,
    run_id: str,
    stop: Waitable,
    *,
    timeout_s: float = RENDEZVOUS_TIMEOUT_S,
    poll_s: float = RENDEZVOUS_POLL_S,
) -> Rendezvous:
    """Other shards: poll the target's groups until shard 0's marker of `run_id` appears;
    RunError (exit 3) after `timeout_s` real seconds."""
    real = SystemClock()
    began = time.monotonic()
    polls = 0
    while True:
        polls += 1
        with unobserved(admin):
            start = latest_start(await admin.groups(), run_id)
        waited = time.monotonic() - began
        if start is not None:
            log.info("shards.ready", run_id=run_id, polls=polls, waited_s=round(waited, 3))
            return Rendezvous(start=start, polls=polls, waited_s=waited)
        if waited >= timeout_s:
            raise RunError(
                f"shard 0 of run {run_id} did not finish its set-up within {timeout_s:g} s "
                "(is it running, against the same --target, with the same --run-id?)"
            )
        if await real.wait_for(stop, poll_s):
            return Rendezvous(start=None, polls=polls, waited_s=time.monotonic() - began)


# -- merging: which reports belong together ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    path: Path
    report: dict[str, Any]

    @property
    def shard(self) -> Mapping[str, Any]:
        value = self.report.get("shard")
        return value if isinstance(value, Mapping) else {}


def _shard_index(folder: Path) -> int:
    suffix = folder.name.removeprefix("shard-")
    return int(suffix) if suffix.isdigit() else -1


def load(paths: Sequence[Path]) -> list[Source]:
    """The reports named: a report.json, a folder holding one, or a run's folder whose
    `shard-*/report.json` are read (they win over a merged report.json beside them)."""
    sources: list[Source] = []
    for path in paths:
        shard_reports = (
            sorted(
                (f for f in path.glob("shard-*") if (f / report.JSON_NAME).is_file()),
                key=_shard_index,
            )
            if path.is_dir()
            else []
        )
        if shard_reports:
            sources.extend(Source(path=f, report=report.read(f)) for f in shard_reports)
        elif path.is_dir() and not (path / report.JSON_NAME).exists():
            raise ReportError(
                f"{path}: not a readable report (no {report.JSON_NAME}, "
                f"no shard-*/{report.JSON_NAME})"
            )
        else:
            sources.append(Source(path=path, report=report.read(path)))
    return sources


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What check() found acceptable: warnings for the merged report; missing shard indexes."""

    warnings: tuple[str, ...] = ()
    missing: tuple[int, ...] = ()


def _plan_hash(source: Source) -> str:
    scenario = source.report.get("scenario")
    value = scenario.get("plan_hash") if isinstance(scenario, Mapping) else None
    if not isinstance(value, str):
        raise ReportError(f"{source.path}: not a {report.SCHEMA} report (no scenario.plan_hash)")
    return value


def check(sources: Sequence[Source], *, allow_missing: bool = False) -> Verdict:
    """Do `sources` make one run? ReportError (exit 2) naming the files when not."""
    if not sources:
        raise ReportError("no reports to merge")
    seen: dict[Path, Source] = {}
    for source in sources:
        key = source.path.resolve()
        if key in seen:
            raise ReportError(f"{source.path} is given twice")
        seen[key] = source
    first = sources[0]
    for source in sources[1:]:
        if _plan_hash(source) != _plan_hash(first):
            raise ReportError(
                f"{first.path} and {source.path} are reports of different runs "
                f"(plan hash {_plan_hash(first)[:12]} vs {_plan_hash(source)[:12]})"
            )
    for source in sources:
        if source.shard.get("index") is None:
            raise ReportError(f"{source.path} is a merged report: merge the reports it was made of")
    counts = {int(s.shard.get("count", 1)) for s in sources}
    if counts == {1}:
        if len(sources) == 1:
            return Verdict()
        return Verdict(warnings=(f"{len(sources)} whole runs of one plan added together",))
    if len(counts) > 1:
        raise ReportError(
            "the reports are shards of different splits (shard counts "
            f"{', '.join(map(str, sorted(counts)))}): merge the shards of one run"
        )
    (count,) = counts
    runs = {s.shard.get("run_id") for s in sources}
    if len(runs) > 1:
        other = next(s for s in sources if s.shard.get("run_id") != first.shard.get("run_id"))
        raise ReportError(
            f"{first.path} and {other.path} are shards of different runs "
            f"(run id {first.shard.get('run_id')} vs {other.shard.get('run_id')})"
        )
    by_index: dict[int, Source] = {}
    for source in sources:
        index = int(source.shard["index"])
        if index in by_index:
            raise ReportError(
                f"shard {index}/{count} is given twice: {by_index[index].path} and {source.path}"
            )
        by_index[index] = source
    missing = tuple(i for i in range(count) if i not in by_index)
    if not missing:
        return Verdict()
    names = ", ".join(f"{i}/{count}" for i in missing)
    if not allow_missing:
        raise ReportError(
            f"shard {names} is missing (give --allow-missing to merge the others into a "
            "partial report)"
        )
    warning = f"shard {names} is missing: the figures are partial"
    return Verdict(warnings=(warning,), missing=missing)
