"""Applying the profiles assigned to the device: the I/O shell around core.planner.

Theory of operation: after a check-in the runner loads the profiles (`GET /agent/profiles`, only
when their `updated` changed), confirms an image that was waiting for its boot, plans with the
device's current conditions, and carries the actions out one by one, queueing an event for
every step (downloading, downloaded, installing, installed/applied, failed, skipped, deferred)
and saving the per-profile progress after each, so a restart resumes and never applies a
profile twice. It plans again after each round (the next part may start) up to a bound.

Apps: download (resumable, sha256-checked), read the APK; an installed app signed with another
certificate is refused (`failed`, reason `cert_mismatch`); an installed versionCode at least as
high is `skipped`; otherwise install (grant_all), launch (starts_on_update), reboot
(reboots_on_update). Images: ask `ota/next`; verify the image is for this device from its own
metadata (reject `not_for_device` even if the server fed it), download, check the pre-build,
install, reboot, and confirm the new build at the next start (a different build after the boot
is `failed` with reason `rollback`). One image per round; the item is `applied` when the feed
has nothing more. Settings: applied through the platform as given.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent import protocol
from agent.core.planner import Action, Conditions, Deferral, Plan, ProfileProgress, plan
from agent.core.schedule import local_minutes_of
from agent.errors import ApkError, OtaPackageError, PlatformError
from agent.runtime.downloads import DownloadError, fetch

if TYPE_CHECKING:
    from agent.runtime.agent import Agent

log = structlog.get_logger("agent.profiles")
MAX_ROUNDS = 10


class ProfileRunner:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.docs: dict[str, tuple[int, dict[str, Any]]] = {}
        self.order: list[str] = []
        self.deferrals: tuple[Deferral, ...] = ()
        self._reported_deferrals: set[tuple[str, str, str]] = set()
        self.checkin_needed = False  # a new build runs: the server must hear of it first

    @property
    def downloads(self) -> Path:
        return self.agent.state_store.folder / "downloads"

    # -- loading -----------------------------------------------------------------------------

    async def refresh(self, refs: list[tuple[str, int]]) -> None:
        """Load the profile documents when the check-in's (uuid, updated) list changed."""
        if refs == [(u, self.docs[u][0]) for u in self.order if u in self.docs] and len(
            refs
        ) == len(self.order):
            return
        data = await self.agent.call(protocol.profiles, "profiles")
        docs: dict[str, tuple[int, dict[str, Any]]] = {}
        order: list[str] = []
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict) and isinstance(item.get("uuid"), str):
                docs[item["uuid"]] = (int(item.get("updated") or 0), item)
                order.append(item["uuid"])
        self.docs, self.order = docs, order

    # -- one pass ----------------------------------------------------------------------------

    async def conditions(self, online: bool) -> Conditions:
        platform = self.agent.platform
        power = await platform.power()
        return Conditions(
            ac=power.ac,
            sleeping=await platform.sleeping(),
            online=online,
            network=await platform.network(),
            local_minutes=local_minutes_of(
                self.agent.clock.now_ms(), self.agent.clock.utc_offset_minutes()
            ),
        )

    def _progress(self) -> dict[str, ProfileProgress]:
        return {
            uuid: ProfileProgress(
                updated=p["updated"], occurrence=p["occurrence"], items=p.get("items", {})
            )
            for uuid, p in self.agent.state.progress.items()
        }

    def _downloaded(self) -> frozenset[str]:
        folder = self.downloads
        if not folder.is_dir():
            return frozenset()
        return frozenset(p.name for p in folder.iterdir() if "." not in p.name)

    async def apply(self, online: bool = True) -> Plan:
        """Plan and act until nothing more can be done now; returns the last plan."""
        await self.confirm_boot()
        self.checkin_needed = False
        result = Plan()
        for _ in range(MAX_ROUNDS):
            profiles = [(u, self.docs[u][0], self.docs[u][1]) for u in self.order]
            result = plan(
                profiles,
                await self.conditions(online),
                self._progress(),
                self.agent.clock.now_ms(),
                self._downloaded(),
            )
            for uuid, fresh in result.progress.items():
                self.agent.state.progress[uuid] = {**asdict(fresh), "items": {}, "reported": ""}
            self._report_deferrals(result.deferrals)
            self._report_completed(result.completed)
            self.agent.state_store.save(self.agent.state)
            if not result.actions:
                break
            for action in result.actions:
                await self._act(action)
                if self.checkin_needed:
                    return result  # a new build: check in before the feed is asked again
        self.deferrals = result.deferrals
        return result

    # -- reporting ---------------------------------------------------------------------------

    def _event(
        self, profile: str, kind: str, target: str, status: str, reason: str = "", **extra: Any
    ) -> None:
        self.agent.queue_event(
            {
                "profileUuid": profile,
                "kind": kind,
                "target": target,
                "status": status,
                "reason": reason,
                **extra,
            }
        )

    def _set(self, action: Action, status: str) -> None:
        progress = self.agent.state.progress[action.profile]
        progress.setdefault("items", {})[action.key] = status
        self.agent.state_store.save(self.agent.state)

    def _report_deferrals(self, deferrals: tuple[Deferral, ...]) -> None:
        current = {(d.profile, d.key, str(d.reason)) for d in deferrals}
        for profile, key, reason in sorted(current - self._reported_deferrals):
            kind = "profile" if key == "profile" else key.split(":")[0]
            self._event(profile, kind, key.partition(":")[2], "deferred", reason)
            log.info("profile.deferred", profile=profile, item=key, reason=reason)
        self._reported_deferrals = current

    def _report_completed(self, completed: tuple[str, ...]) -> None:
        for uuid in completed:
            progress = self.agent.state.progress.get(uuid)
            if progress is None:
                continue
            marker = f"{progress['updated']}:{progress['occurrence']}"
            if progress.get("reported") == marker:
                continue
            failed = [k for k, v in progress.get("items", {}).items() if v == "failed"]
            self._event(uuid, "profile", "", "failed" if failed else "applied", ",".join(failed))
            progress["reported"] = marker
            log.info("profile.done", profile=uuid, failed=failed)

    # -- actions -----------------------------------------------------------------------------

    async def _act(self, action: Action) -> None:
        try:
            if action.consent and not await self.agent.platform.consent(action.key):
                self._event(action.profile, action.kind, action.target, "deferred", "consent")
                return
            if action.kind == "app":
                await self._app(action)
            elif action.kind == "ota":
                await self._ota(action)
            else:
                await self.agent.platform.apply_settings(dict(action.options))
                self._event(action.profile, "settings", "", "applied")
                self._set(action, "applied")
        except (DownloadError, ApkError, OtaPackageError, PlatformError) as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            self._event(action.profile, action.kind, action.target, "failed", str(reason))
            self._set(action, "failed")
            log.warning("profile.step_failed", item=action.key, error=str(exc))

    async def _download(self, action: Action, file_uuid: str) -> Path:
        self._event(action.profile, action.kind, file_uuid, "downloading")
        self._set(action, "downloading")
        path = await fetch(self.agent.transport, self.agent.creds(), file_uuid, self.downloads)
        self._event(action.profile, action.kind, file_uuid, "downloaded")
        return path

    async def _app(self, action: Action) -> None:
        path = await self._download(action, action.target)
        from midm_common.apk import read_apk_metadata

        meta = await asyncio.to_thread(read_apk_metadata, path)
        installed = {a.package_name: a for a in await self.agent.platform.installed_apps()}
        current = installed.get(meta.package_name)
        if current is not None and current.cert_md5 and meta.cert_md5 != current.cert_md5:
            self._event(
                action.profile,
                "app",
                meta.package_name,
                "failed",
                "cert_mismatch",
                versionCode=meta.version_code,
            )
            self._set(action, "failed")
            return
        if current is not None and (current.version_code or 0) >= meta.version_code:
            self._event(
                action.profile,
                "app",
                meta.package_name,
                "skipped",
                "already_installed",
                versionCode=current.version_code,
            )
            self._set(action, "skipped")
            return
        self._event(
            action.profile, "app", meta.package_name, "installing", versionCode=meta.version_code
        )
        options: Mapping[str, Any] = action.options
        await self.agent.platform.install_app(path, grant_all=bool(options.get("grant_all")))
        self._event(
            action.profile, "app", meta.package_name, "installed", versionCode=meta.version_code
        )
        self._set(action, "installed")
        if options.get("starts_on_update"):
            await self.agent.platform.launch(meta.package_name)
        if options.get("reboots_on_update"):
            await self.agent.platform.reboot()

    async def _ota(self, action: Action) -> None:
        answer = await self.agent.call(
            lambda creds: protocol.Request(
                method="GET",
                path=protocol.OTA_NEXT,
                params={"profileUuid": action.profile},
                headers=protocol.device_headers(creds),
                name="ota_next",
            ),
            "ota_next",
        )
        image = answer.get("ota") if isinstance(answer, dict) else None
        reason = str(answer.get("reason", "")) if isinstance(answer, dict) else ""
        if image is None:
            if reason == "not_before":
                self._event(action.profile, "ota", "", "deferred", reason)
                return
            done = (
                "applied"
                if self.agent.state.progress[action.profile]["items"].get("ota")
                in ("installed", "stepped")
                else "skipped"
            )
            self._event(action.profile, "ota", "", done, reason)
            self._set(action, done)
            return
        file_uuid = str(image["fileUuid"])
        build = await self.agent.platform.build()
        path = await self._download(action, file_uuid)
        from midm_common.ota import read_ota_metadata

        meta = await asyncio.to_thread(read_ota_metadata, path)
        info = image.get("otaInfo") or {}
        foreign = (
            (meta.pre_devices and build.device_id not in meta.pre_devices)
            or bool(info.get("abUpdate")) != build.ab_update
            or (meta.pre_build and meta.pre_build != build.fingerprint)
        )
        if foreign:
            self._event(
                action.profile, "ota", file_uuid, "failed", "not_for_device", build=meta.post_build
            )
            self._set(action, "failed")
            return
        self._event(action.profile, "ota", file_uuid, "installing", build=meta.post_build)
        await self.agent.platform.apply_ota(path, ab_update=build.ab_update)
        self.agent.state.pending_boot = {
            "profile": action.profile,
            "target": file_uuid,
            "expected": meta.post_build,
            "previous": build.fingerprint,
        }
        self._set(action, "installing")
        await self.agent.platform.reboot()
        await self.confirm_boot()

    async def confirm_boot(self) -> None:
        """After the reboot: the new build is running (installed) or it is not (rollback)."""
        pending = self.agent.state.pending_boot
        if not pending:
            return
        build = await self.agent.platform.build()
        profile, target = pending["profile"], pending["target"]
        self.agent.state.pending_boot = {}
        if profile in self.agent.state.progress:
            items = self.agent.state.progress[profile].setdefault("items", {})
        else:
            items = {}
        if build.fingerprint == pending["expected"]:
            self._event(profile, "ota", target, "installed", build=build.fingerprint)
            items["ota"] = "stepped"  # ask the feed again: a chain may have more steps
            self.checkin_needed = True
        else:
            await self.agent.platform.rollback()
            self._event(profile, "ota", target, "failed", "rollback", build=build.fingerprint)
            items["ota"] = "failed"
        self.agent.state_store.save(self.agent.state)
        log.info("ota.confirmed", build=build.fingerprint, expected=pending["expected"])


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
