"""The agent applies profiles end to end against midm-server, with real APKs and OTA zips.

Tests of the running agent wait for its requests, platform changes and sleeps
(`Changes.until`), never on the wall clock; its FakeClock is never moved.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

from agent.clock import FakeClock
from agent.errors import TransportError
from agent.platforms.base import AppRecord, BuildInfo, HardwareInfo
from agent.runtime.agent import Agent
from agent.transport.base import Download
from tests.agent.agent_harness import RecordingPlatform, RecordingTransport, make_agent, running
from tests.helpers import Client, Server, expected_apks, ota_zip

FP1 = "acme/sim/sim:14/A/1:user/release-keys"
FP2 = "acme/sim/sim:14/A/2:user/release-keys"
FP3 = "acme/sim/sim:14/A/3:user/release-keys"


def sim(**changes: Any) -> RecordingPlatform:
    return RecordingPlatform(
        HardwareInfo(serial_no="S1", model="Sim"),
        BuildInfo(fingerprint=FP1, build_date=1700000000, device_id="sim", ab_update=True),
        **changes,
    )


async def upload_image(
    admin: Client,
    post: str,
    date: int,
    pre: str = "",
    device: str = "sim",
    size: int = 10,
    info: dict[str, Any] | None = None,
) -> str:
    meta = {"ota-type": "AB", "pre-device": device, "post-build": post, "post-timestamp": str(date)}
    if pre:
        meta["pre-build"] = pre
    fields = {"otaInfo": json.dumps(info)} if info else {}
    reply = await admin.upload(
        "/ota/api/ota/upload",
        ota_zip(meta, payload=random.Random(post + pre).randbytes(size)),
        f"{post[-8:]}-{pre[-3:]}.zip",
        **fields,
    )
    assert reply.status == 200, reply.body
    return str(reply.data["fileUuid"])


async def profile(admin: Client, body: dict[str, Any]) -> str:
    reply = await admin.post("/ota/api/profile/save", {"scope": {"device": ["S1"]}, **body})
    assert reply.status == 200, reply.body
    return str(reply.data["uuid"])


def events(server: Server, kind: str | None = None) -> list[tuple[str, str, str]]:
    rows = server.sql("SELECT kind, status, reason FROM events ORDER BY rowid")
    return [(r[0], r[1], r[2]) for r in rows if kind is None or r[0] == kind]


def agent_for(
    server: Server, tmp_path: Path, platform: RecordingPlatform
) -> tuple[Agent, RecordingTransport]:
    return make_agent(server.base, tmp_path / "state", platform=platform)


async def test_apps_then_images(server: Server, admin: Client, tmp_path: Path) -> None:
    """A profile with an app and an image: the app installs, then the image, then applied."""
    app = (await admin.upload_apk("basic-v1.apk")).data["fileUuid"]
    image = await upload_image(admin, FP2, 1800000000)
    uuid = await profile(
        admin,
        {
            "apps": {"install": [{"uuid": app, "grant_all": True, "starts_on_update": True}]},
            "otas": [image],
            "profile": {"applyOrder": "apps"},
        },
    )
    platform = sim()
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert platform.apps["com.example.basic"].version_code == 1
    assert platform.granted["com.example.basic"] and platform.launched == ["com.example.basic"]
    assert (await platform.build()).fingerprint == FP2 and platform.reboots == 1
    status = (await admin.get("/ota/api/profile/status", uuid=uuid)).data
    assert status["applied"] == 1
    kinds = events(server)
    assert kinds.index(("app", "installed", "")) < kinds.index(("ota", "installed", ""))
    assert kinds[-1] == ("profile", "applied", "")
    app_status = (
        await admin.get(
            "/ota/api/device/app/status", serialNo="S1", packageName="com.example.basic"
        )
    ).data
    assert app_status["installed"] and app_status["versionCode"] == 1
    await agent.run_once()  # nothing is applied twice
    assert platform.reboots == 1 and events(server).count(("profile", "applied", "")) == 1


async def test_need_ac_defers_until_ac_returns(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """On battery the image is deferred (need_ac); with AC back it installs."""
    image = await upload_image(admin, FP2, 1800000000)
    uuid = await profile(admin, {"otas": [image], "settings": {"otas": {"need_ac": True}}})
    platform = sim(ac=False)
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert ("ota", "deferred", "need_ac") in events(server)
    assert (await admin.get("/ota/api/profile/status", uuid=uuid)).data["deferred"] == 1
    assert (await platform.build()).fingerprint == FP1
    platform.set_power(ac=True)
    await agent.run_once()
    assert (await platform.build()).fingerprint == FP2
    assert (await admin.get("/ota/api/profile/status", uuid=uuid)).data["applied"] == 1


async def test_partial_chain_or_full_image(server: Server, admin: Client, tmp_path: Path) -> None:
    """partialFirst follows the cheaper chain b1 -> b2 -> b3 in two installs; else the full."""
    full = await upload_image(admin, FP3, 1900000000, size=5000)
    step1 = await upload_image(admin, FP2, 1800000000, pre=FP1, size=10)
    step2 = await upload_image(admin, FP3, 1900000000, pre=FP2, size=10)
    await profile(
        admin, {"otas": [full, step1, step2], "settings": {"otas": {"partialFirst": True}}}
    )
    chained = sim()
    agent, _ = agent_for(server, tmp_path / "a", chained)
    await agent.run_once()
    assert (await chained.build()).fingerprint == FP3 and chained.reboots == 2
    installed = server.sql("SELECT target FROM events WHERE kind = 'ota' AND status = 'installed'")
    assert [r[0] for r in installed] == [step1, step2]


async def test_full_image_without_partial_first(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """Without partialFirst the full image is fed: one install."""
    full = await upload_image(admin, FP3, 1900000000, size=5000)
    step1 = await upload_image(admin, FP2, 1800000000, pre=FP1, size=10)
    await profile(admin, {"otas": [full, step1], "settings": {"otas": {"partialFirst": False}}})
    platform = sim()
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert (await platform.build()).fingerprint == FP3 and platform.reboots == 1


async def test_foreign_image_is_rejected_by_the_agent(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """An image the server feeds (otaInfo says deviceId sim) but whose zip is for another
    device is refused by the agent: failed, not_for_device, nothing installed."""
    image = await upload_image(admin, FP2, 1800000000, device="other", info={"deviceId": "sim"})
    await profile(admin, {"otas": [image]})
    platform = sim()
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert ("ota", "failed", "not_for_device") in events(server)
    assert (await platform.build()).fingerprint == FP1 and platform.reboots == 0


async def test_failed_boot_rolls_back(server: Server, admin: Client, tmp_path: Path) -> None:
    """A boot that does not come up on the new build is reported failed (rollback)."""
    image = await upload_image(admin, FP2, 1800000000)
    uuid = await profile(admin, {"otas": [image]})
    platform = sim()
    platform.boot_fails = True
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert ("ota", "failed", "rollback") in events(server)
    assert platform.rollbacks == 1
    assert (await admin.get("/ota/api/profile/status", uuid=uuid)).data["failed"] == 1


async def test_certificate_mismatch_is_refused(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """An APK signed by another key than the installed app is not installed (cert_mismatch)."""
    app = (await admin.upload_apk("basic-v2-othercert.apk")).data["fileUuid"]
    await profile(admin, {"apps": {"install": [{"uuid": app}]}})
    installed = AppRecord(
        package_name="com.example.basic",
        version_code=1,
        cert_md5=expected_apks()["basic-v1.apk"]["certMd5"],
    )
    platform = sim(apps=[installed])
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert ("app", "failed", "cert_mismatch") in events(server)
    assert platform.apps["com.example.basic"].version_code == 1


async def test_interrupted_download_resumes(server: Server, admin: Client, tmp_path: Path) -> None:
    """A dropped download resumes with Range from where it stopped and installs the image."""
    image = await upload_image(admin, FP2, 1800000000, size=300_000)
    await profile(admin, {"otas": [image]})
    platform = sim()
    agent, transport = agent_for(server, tmp_path, platform)
    offsets: list[int] = []
    real = transport.download

    async def flaky(path: str, headers: Any, target: Path, offset: int) -> Download:
        offsets.append(offset)
        if len(offsets) == 1:
            await real(path, headers, target, offset)
            with target.open("r+b") as handle:  # keep only part of it, as a dropped link would
                handle.truncate(100_000)
            raise TransportError(f"download {path}: interrupted (test)")
        return await real(path, headers, target, offset)

    transport.download = flaky  # type: ignore[method-assign]
    with contextlib.suppress(TransportError):  # the dropped download ends this run
        await agent.run_once()
    assert (await platform.build()).fingerprint == FP1
    restarted, transport2 = agent_for(server, tmp_path, platform)  # a new process, same state
    real = transport2.download
    transport2.download = flaky  # type: ignore[method-assign]
    await restarted.run_once()
    assert offsets == [0, 100_000]
    assert (await platform.build()).fingerprint == FP2
    assert events(server).count(("profile", "applied", "")) == 1


async def test_unscope_and_remove_after_apply(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """unscopeIfApplied takes the device out; removeIfNoScope deletes the emptied profile."""
    keep = await profile(
        admin,
        {
            "scope": {"device": ["S1", "S2"]},
            "settings": {"wifi": {"ssid": "lab"}},
            "profile": {"unscopeIfApplied": True},
        },
    )
    drop = await profile(
        admin,
        {
            "settings": {"wifi": {"ssid": "lab"}},
            "profile": {"unscopeIfApplied": True, "removeIfNoScope": True},
        },
    )
    platform = sim()
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert platform.settings == {"wifi": {"ssid": "lab"}}
    assert (await admin.get("/ota/api/profile/findBy", uuid=keep)).data["scope"]["device"] == ["S2"]
    assert (await admin.get("/ota/api/profile/findBy", uuid=drop)).code == 40400


async def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    """A download whose bytes do not match the server's sha256 is deleted and refused."""
    from agent.protocol import Credentials, Request, Response
    from agent.runtime.downloads import DownloadError, fetch
    from agent.transport.mock import MockTransport

    async def handler(request: Request) -> Response:
        return Response(status=200, body=b"tampered", headers={"X-Checksum-SHA256": "0" * 64})

    try:
        await fetch(
            MockTransport(handler), Credentials(api_key="k", device_token="t"), "F1", tmp_path
        )
    except DownloadError as exc:
        assert "sha256" in str(exc)
    else:
        raise AssertionError("a tampered download was accepted")
    assert list(tmp_path.iterdir()) == [] or all(p.suffix == ".etag" for p in tmp_path.iterdir())


async def test_deferred_work_resumes_on_a_platform_event(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """need_ac: plugging AC in wakes the running agent at once (no poll, no clock advance)."""
    image = await upload_image(admin, FP2, 1800000000)
    await profile(admin, {"otas": [image], "settings": {"otas": {"need_ac": True}}})
    platform = sim(ac=False)
    clock = FakeClock()
    agent, transport = make_agent(server.base, tmp_path / "state", platform=platform, clock=clock)
    async with running(agent):
        await transport.changes.until(
            lambda: ("ota", "deferred", "need_ac") in events(server) and clock.sleeping == 1,
            "the image deferred for need_ac, reported, and the agent asleep",
        )
        assert platform.reboots == 0
        platform.set_power(ac=True)
        await transport.changes.until(lambda: platform.reboots == 1, "the image installed")
        assert (await platform.build()).fingerprint == FP2


async def test_wake_to_apply_while_sleeping(server: Server, admin: Client, tmp_path: Path) -> None:
    """A sleeping device defers (applyWhile.sleeping false) until wakeToApply wakes it."""
    platform = sim()
    platform.is_sleeping = True
    clock = FakeClock()
    agent, transport = make_agent(server.base, tmp_path / "state", platform=platform, clock=clock)
    async with running(agent):
        await transport.changes.until(
            lambda: (
                agent.statistics().checkins >= 1 and agent.push_connected and clock.sleeping == 1
            ),
            "checked in asleep, connected, waiting for the next check-in",
        )
        server.clock.advance(5)  # type: ignore[attr-defined]
        await profile(
            admin,
            {
                "settings": {"wifi": {"ssid": "lab"}},
                "profile": {"applyWhile": {"sleeping": False}, "wakeToApply": True},
            },
        )
        await transport.changes.until(lambda: bool(platform.settings), "the settings applied")
        assert platform.settings == {"wifi": {"ssid": "lab"}} and not platform.is_sleeping


async def test_consent_is_asked_for_non_silent_installs(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """silent_install false: without the user's consent the app waits (deferred, consent)."""
    app = (await admin.upload_apk("basic-v1.apk")).data["fileUuid"]
    await profile(admin, {"apps": {"install": [{"uuid": app, "silent_install": False}]}})
    platform = sim()
    platform.consents = False
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.run_once()
    assert ("app", "deferred", "consent") in events(server) and not platform.apps
    platform.consents = True
    await agent.run_once()
    assert platform.apps["com.example.basic"].version_code == 1


async def test_restart_after_install_confirms_the_boot(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """A crash between installing an image and confirming it: the next start confirms the
    build and reports it, without installing again."""
    image = await upload_image(admin, FP2, 1800000000)
    uuid = await profile(admin, {"otas": [image]})
    platform = sim()
    agent, _ = agent_for(server, tmp_path, platform)
    await agent.ensure_enrolled()
    agent.state.progress[uuid] = {
        "updated": 0,
        "occurrence": 0,
        "items": {"ota": "installing"},
        "reported": "",
    }
    agent.state.pending_boot = {"profile": uuid, "target": image, "expected": FP2, "previous": FP1}
    agent.state_store.save(agent.state)
    await agent.commit()
    platform.set_build(fingerprint=FP2, build_date=1800000000)  # the boot came up on the image
    restarted, transport = agent_for(server, tmp_path, platform)
    await restarted.run_once()
    assert ("ota", "installed", "") in events(server)
    assert platform.reboots == 0 and "download" not in transport.names
