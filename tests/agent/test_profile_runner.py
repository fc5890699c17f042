"""ProfileRunner on its own collaborators (platform, clock, device call, event sink, progress,
downloads), without an Agent, a server or a socket; and the wire mapping it relies on."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import protocol
from agent.clock import FakeClock
from agent.models import (
    ApkArtifact,
    AppRecord,
    BuildInfo,
    EventStatus,
    HardwareInfo,
    ItemStatus,
    Kind,
    OtaArtifact,
    ProfileEvent,
)
from agent.platforms.facts_file import override_build
from agent.platforms.simulated import SimulatedPlatform
from agent.protocol import Credentials, Request
from agent.runtime.artifacts import apk_artifact
from agent.runtime.profiles import ProfileRunner
from tests.helpers import APKS

ROOT = Path(__file__).parent.parent.parent
CREDS = Credentials(api_key="k", device_token="t")


@dataclass
class Progress:
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending_boot: dict[str, Any] = field(default_factory=dict)


class Downloads:
    """Artifacts handed out as a fleet's store would: metadata, no file."""

    def __init__(self) -> None:
        full = apk_artifact(APKS / "basic-v1.apk")
        self.apk = ApkArtifact(sha256=full.sha256, size=full.size, metadata=full.metadata)
        self.fetched: list[str] = []

    async def app(self, file_uuid: str) -> ApkArtifact:
        self.fetched.append(file_uuid)
        return self.apk

    async def image(self, file_uuid: str) -> OtaArtifact:
        raise AssertionError("no image in these tests")

    def downloaded(self) -> frozenset[str]:
        return frozenset(self.fetched)


class Platform(SimulatedPlatform):
    """Remembers how many commits had happened when each install began."""

    def __init__(self, commits: Callable[[], int]) -> None:
        super().__init__(HardwareInfo(serial_no="S1"), BuildInfo(fingerprint="f1"))
        self.commits = commits
        self.commits_at_install: list[int] = []

    async def install_app(self, apk: ApkArtifact, *, grant_all: bool = False) -> None:
        self.commits_at_install.append(self.commits())
        await super().install_app(apk, grant_all=grant_all)


def runner(answers: dict[str, Any], state: Progress) -> tuple[ProfileRunner, list[Any]]:
    """A runner whose device calls answer from `answers` (by request name); returns it and
    the log of what it did (events, saves, commits)."""
    log: list[Any] = []

    async def call(request_for: Callable[[Credentials], Request], name: str) -> Any:
        log.append(("call", request_for(CREDS).name))
        return answers[name]

    async def commit() -> None:
        log.append("commit")

    platform = Platform(lambda: log.count("commit"))
    return (
        ProfileRunner(
            platform=platform,
            clock=FakeClock(),
            call=call,
            emit=log.append,
            state=state,
            save=lambda: log.append("save"),
            commit=commit,
            artifacts=Downloads(),
        ),
        log,
    )


async def test_the_runner_needs_no_agent() -> None:
    """An app and settings: events in order, the progress saved, a commit before the install."""
    doc = {
        "uuid": "P",
        "updated": 3,
        "apps": {"install": [{"uuid": "A1"}]},
        "settings": {"wifi": {"ssid": "lab"}},
        "profile": {"applyOrder": "apps"},
    }
    state = Progress()
    profiles, log = runner({"profiles": [doc]}, state)
    await profiles.refresh([("P", 3)])
    await profiles.apply()
    events = [(e.kind, e.status, e.target) for e in log if isinstance(e, ProfileEvent)]
    assert events == [
        (Kind.APP, EventStatus.DOWNLOADING, "A1"),
        (Kind.APP, EventStatus.DOWNLOADED, "A1"),
        (Kind.APP, EventStatus.INSTALLING, "com.example.basic"),
        (Kind.APP, EventStatus.INSTALLED, "com.example.basic"),
        (Kind.SETTINGS, EventStatus.APPLIED, ""),
        (Kind.PROFILE, EventStatus.APPLIED, ""),
    ]
    platform = profiles.platform
    assert isinstance(platform, Platform) and platform.commits_at_install == [1]
    assert state.progress["P"]["items"] == {"app:A1": "installed", "settings": "applied"}
    assert log[0] == ("call", "profiles") and "save" in log
    await profiles.refresh([("P", 3)])  # unchanged: not loaded again
    assert [entry for entry in log if entry == ("call", "profiles")] == [("call", "profiles")]


async def test_progress_written_as_stepped_by_older_agents_still_reads() -> None:
    """An image step installed by an agent before the rename ("stepped"): when the feed has
    nothing more, the item is applied, not skipped."""
    doc = {"uuid": "P", "updated": 1, "otas": ["O1"]}
    state = Progress(
        progress={"P": {"updated": 1, "occurrence": 0, "items": {"ota": "stepped"}, "reported": ""}}
    )
    profiles, log = runner({"profiles": [doc], "ota_next": {"ota": None, "reason": "none"}}, state)
    await profiles.refresh([("P", 1)])
    await profiles.apply()
    ota = [e for e in log if isinstance(e, ProfileEvent) and e.kind is Kind.OTA]
    assert [(e.status, e.reason) for e in ota] == [(EventStatus.APPLIED, "none")]
    assert state.progress["P"]["items"]["ota"] == ItemStatus.APPLIED
    assert ItemStatus.read("stepped") is ItemStatus.STEP_INSTALLED
    assert ItemStatus.read("") is None and ItemStatus.read("bogus") is None


def test_profiles_does_not_import_the_agent() -> None:
    """runtime/profiles.py is given collaborators: it imports nothing of runtime/agent.py."""
    tree = ast.parse((ROOT / "agent" / "runtime" / "profiles.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "agent.runtime.agent" not in imported


def test_wire_names_round_trip_through_the_protocol_module() -> None:
    """One mapping a model: to JSON and back (apps), into --facts overrides (build), and the
    event body with its optional fields."""
    app = AppRecord(package_name="a", version_code=2, cert_md5="c", first_installed=5)
    wire = protocol.app_to_wire(app)
    assert wire["packageName"] == "a" and wire["firstInstalled"] == 5
    assert protocol.app_from_wire(wire) == app
    assert protocol.app_from_wire({"packageName": "b", "unknown": 1}) == AppRecord(package_name="b")
    build = BuildInfo(fingerprint="f", build_date=7, ab_update=True, sku_id="EU")
    facts = {"build": protocol.build_to_wire(build)}
    assert override_build(BuildInfo(), facts) == build
    filled = override_build(BuildInfo(fingerprint="mine"), facts, fill_only=True)
    assert (filled.fingerprint, filled.sku_id) == ("mine", "EU")
    event = ProfileEvent(profile="P", kind=Kind.OTA, target="F", status=EventStatus.INSTALLED)
    assert protocol.event_to_wire(event) == {
        "profileUuid": "P",
        "kind": "ota",
        "target": "F",
        "status": "installed",
        "reason": "",
    }
    with_build = ProfileEvent(
        profile="P", kind=Kind.APP, target="x", status=EventStatus.SKIPPED, version_code=0
    )
    assert protocol.event_to_wire(with_build)["versionCode"] == 0
