"""Field fixes, end to end against midm-server on 127.0.0.1: a `--facts` clone takes an update,
an incomplete hardware identity is said once, and the push channel comes back with the server."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from agent.cli import make_platform
from agent.clock import FakeClock
from agent.config import AgentConfig
from agent.platforms.base import Platform, gather_facts
from agent.platforms.linux import LinuxPlatform
from agent.runtime.agent import Agent
from agent.runtime.artifacts import ota_artifact
from agent.runtime.outbox import FileOutbox
from agent.runtime.state import FileStateStore
from tests.agent.agent_harness import RecordingPlatform, RecordingTransport, make_agent, running
from tests.helpers import Client, Server, ota_zip

FP1 = "acme/rig/rig:14/A/1:user/release-keys"
FP2 = "acme/rig/rig:14/A/2:user/release-keys"


def rig_tree(root: Path, *, dmi: dict[str, str] | None = None) -> Path:
    """A fake /sys and /etc: DMI files as given (none: unreadable), a wired link, os-release."""
    folder = root / "sys" / "class" / "dmi" / "id"
    folder.mkdir(parents=True)
    for name, value in (dmi or {}).items():
        (folder / name).write_text(value + "\n")
    net = root / "sys" / "class" / "net" / "eth0"
    net.mkdir(parents=True)
    (net / "operstate").write_text("up\n")
    etc = root / "etc"
    etc.mkdir()
    (etc / "os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n')
    (etc / "machine-id").write_text("0123abcd\n")
    return root


def rig(root: Path, facts: dict[str, Any] | None = None) -> LinuxPlatform:
    return LinuxPlatform(
        state_dir=root / "state", facts=facts, sysfs=root / "sys", etc=root / "etc"
    )


# -- 8: a field clone takes an update ---------------------------------------------------------

CLONE = {
    "hardware_info": {"serial_no": "CLONE-1", "manufacturer": "Acme", "model": "R1"},
    "build": {"fingerprint": FP1, "buildDate": 1700000000, "deviceId": "rig", "abUpdate": True},
}


def linux_clone(tmp_path: Path) -> Platform:
    return rig(rig_tree(tmp_path / "rig"), CLONE)


def simulated_clone(tmp_path: Path) -> Platform:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(CLONE))
    return make_platform(AgentConfig(platform="simulated", facts=facts, state_dir=tmp_path / "s"))


@pytest.mark.parametrize("clone", [linux_clone, simulated_clone], ids=["linux", "simulated"])
async def test_facts_clone_takes_an_update(
    server: Server, admin: Client, tmp_path: Path, clone: Callable[[Path], Platform]
) -> None:
    """`--facts` gives the starting build; after an image is applied the device reports the
    image's fingerprint and buildDate: `installed`, then the profile `applied` (no rollback)."""
    meta = {
        "ota-type": "AB",
        "pre-device": "rig",
        "post-build": FP2,
        "post-timestamp": "1800000000",
    }
    upload = await admin.upload("/ota/api/ota/upload", ota_zip(meta), "fp2.zip")
    assert upload.status == 200, upload.body
    image = upload.data["fileUuid"]
    saved = await admin.post(
        "/ota/api/profile/save", {"scope": {"device": ["CLONE-1"]}, "otas": [image]}
    )
    assert saved.status == 200, saved.body
    platform = clone(tmp_path)
    before = await platform.build()
    assert (before.fingerprint, before.build_date) == (FP1, 1700000000)
    agent = Agent(
        config=AgentConfig(
            server=server.base,
            api_key="key-alpha",
            state_dir=tmp_path / "state",
            admin_email="admin@alpha.test",
            admin_password="pw-alpha",
        ),
        platform=platform,
        transport=RecordingTransport(server.base, timeout_s=10.0),
        clock=FakeClock(),
        state_store=FileStateStore(tmp_path / "state"),
        outbox=FileOutbox(tmp_path / "state" / "outbox"),
        rng=random.Random(7),
    )
    await agent.run_once()
    rows = server.sql("SELECT kind, status, reason FROM events ORDER BY rowid")
    ota = [(r["status"], r["reason"]) for r in rows if r["kind"] == "ota"]
    assert ("installed", "") in ota and ("failed", "rollback") not in ota, ota
    assert [(r["status"], r["reason"]) for r in rows if r["kind"] == "profile"] == [("applied", "")]
    after = await platform.build()
    assert (after.fingerprint, after.build_date, after.device_id) == (FP2, 1800000000, "rig")
    report = json.loads(server.sql("SELECT report FROM devices WHERE serial_no = 'CLONE-1'")[0][0])
    assert (report["build"]["fingerprint"], report["build"]["buildDate"]) == (FP2, 1800000000)


async def test_rollback_returns_to_the_facts_build(tmp_path: Path) -> None:
    """On the linux rig, a rollback makes the starting (facts) build the reported one again."""
    platform = rig(rig_tree(tmp_path), CLONE)
    package = tmp_path / "fp2.zip"
    package.write_bytes(
        ota_zip({"ota-type": "AB", "post-build": FP2, "post-timestamp": "1800000000"})
    )
    await platform.apply_ota(ota_artifact(package), ab_update=True)
    assert (await platform.build()).fingerprint == FP1  # staged, not running yet
    await platform.reboot()
    switched = await platform.build()
    assert (switched.fingerprint, switched.build_date, switched.slot) == (FP2, 1800000000, "_b")
    await platform.rollback()
    back = await platform.build()
    assert (back.fingerprint, back.build_date, back.slot) == (FP1, 1700000000, "_a")


# -- 9: hardware info that DMI does not give ----------------------------------------------------


async def test_unreadable_dmi_is_said_once(tmp_path: Path) -> None:
    """No readable DMI: one `platform.hardware_incomplete` warning naming the empty fields and
    `--facts`, however many check-ins gather the facts."""
    platform = rig(rig_tree(tmp_path))
    with capture_logs() as logs:
        for _ in range(3):
            facts = await gather_facts(platform)
    assert facts.hardware.serial_no == "0123abcd" and facts.hardware.model == ""
    warnings = [e for e in logs if e["event"] == "platform.hardware_incomplete"]
    assert len(warnings) == 1, logs
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["empty"] == ["manufacturer", "brand", "model"]
    assert "--facts" in warnings[0]["hint"]


async def test_facts_fill_what_dmi_lacks(tmp_path: Path) -> None:
    """Fields `--facts` gives are not named; a complete identity gives no warning at all."""
    partial = rig(rig_tree(tmp_path / "a"), {"hardware_info": {"model": "R1"}})
    complete = rig(
        rig_tree(
            tmp_path / "b",
            dmi={"sys_vendor": "Intel Corporation", "product_name": "NUC8i5BEH"},
        )
    )
    with capture_logs() as logs:
        await partial.hardware()
        await complete.hardware()
    warnings = [e for e in logs if e["event"] == "platform.hardware_incomplete"]
    assert [w["empty"] for w in warnings] == [["manufacturer", "brand"]]


# -- 10: the push channel after an outage -------------------------------------------------------


async def test_push_reconnects_after_the_first_checkin_that_succeeds(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """Server down, then up again on the same port: the first check-in that succeeds brings the
    push channel back at once (rtcEnabled true), without waiting for the push backoff: the
    agent's clock never moves in this test."""
    clock = FakeClock()  # never moved: only a check-in can end the push channel's backoff
    agent, transport = make_agent(server.base, tmp_path / "state", clock=clock)
    platform, changes, stats = agent.platform, transport.changes, agent.statistics
    assert isinstance(platform, RecordingPlatform)
    port = urlsplit(server.base).port
    assert port is not None
    server.config = replace(server.config, port=port)  # the restart below takes the same port
    async with running(agent):
        await changes.until(
            lambda: stats().checkins == 1 and agent.push_connected and clock.sleeping == 1,
            "first cycle done, push channel open",
        )
        await server.stop()
        await changes.until(
            lambda: not agent.push_connected and clock.sleeping == 2,
            "push channel closed by the shutdown, its backoff begun",
        )
        platform.set_power(ac=False)  # a platform event: check in now, into the outage
        await changes.until(
            lambda: stats().failures == 1 and clock.sleeping == 2,
            "check-in failed during the outage, its backoff begun",
        )
        await server.start()
        platform.set_power(ac=True)  # cuts the check-in backoff short; the push's is untouched
        await changes.until(lambda: stats().checkins == 2, "check-in after the outage")
        await changes.until(lambda: agent.push_connected, "push channel back after the check-in")
        assert clock.monotonic() == 0.0
        found = (await admin.get("/ota/api/device/findBy", serialNo="S1")).data
        assert found["states"]["rtcEnabled"] is True


async def test_revoked_token_at_the_push_handshake_registers_again_at_once(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """An admin re-save closes the push channel and revokes the token; the push loop's next
    handshake is refused (401): it registers again at once (once: never a save) and the channel
    is back, without waiting for the next check-in (the clock never reaches it)."""
    clock = FakeClock()
    agent, transport = make_agent(server.base, tmp_path / "state", clock=clock)
    changes, stats = transport.changes, agent.statistics
    async with running(agent):
        await changes.until(
            lambda: stats().checkins == 1 and agent.push_connected and clock.sleeping == 1,
            "first cycle done, push channel open",
        )
        await admin.post(
            "/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "S1"}}}]
        )
        await changes.until(
            lambda: not agent.push_connected and clock.sleeping == 2,
            "push channel closed by the re-save, its backoff begun",
        )
        clock.advance(2.0)  # the push backoff (at most 1 s now), far from the 60 s check-in
        await changes.until(
            lambda: agent.state.registrations == 2 and clock.sleeping == 2,
            "refused handshake, registered again from the push loop, backoff begun",
        )
        clock.advance(4.0)
        await changes.until(lambda: agent.push_connected, "push channel back, new token")
        assert stats().checkins == 1 and transport.names.count("register") == 2
        assert transport.names.count("save") == 1  # the first enrollment's, never another
