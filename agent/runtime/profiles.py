"""Applying the profiles assigned to the device: the I/O shell around core.planner.

Theory of operation: after a check-in the runner loads the profiles (`GET /agent/profiles`, only
when their `updated` changed), confirms an image that was waiting for its boot, plans with the
device's current conditions, and carries the actions out one by one, emitting an event for
every step (downloading, downloaded, installing, installed/applied, failed, skipped, deferred)
and saving the per-profile progress after each (committed before every install, image and
reboot), so a restart resumes and never applies a profile twice. It plans again after each
round (the next part may start) up to a bound.

Apps: download (resumable or streamed, sha256-checked, metadata read once per content: the
`DeviceArtifacts`); an installed app signed with another certificate is refused (`failed`,
reason `cert_mismatch`); an installed versionCode at least as high is `skipped`; otherwise
install (grant_all), launch (starts_on_update), reboot (reboots_on_update). Images: ask
`ota/next`; verify the image is for this device from its own metadata (reject `not_for_device`
even if the server fed it), download, check the pre-build, with `--ota-certs` check its signer
(agent.runtime.image_trust: `failed`, reason `bad_signature`, never installed), install, reboot,
and confirm the new build at the next start (a different build after the boot is `failed` with
reason `rollback`).
One image per round; the item is `applied` when the feed has nothing more. Settings: applied
through the platform as given.

The runner is given what it needs, not the agent: the platform, the clock, a device call (the
agent's, which registers again on a revoked token), an event sink, the progress it keeps (in the
agent's durable state) with ways to save and commit it, and the device's downloads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import structlog

from agent import protocol
from agent.clock import Clock
from agent.core.planner import Action, Conditions, Deferral, Plan, ProfileProgress, plan
from agent.core.schedule import local_minutes_of
from agent.errors import ApkError, OtaPackageError, PlatformError
from agent.models import (
    ApkArtifact,
    EventStatus,
    ItemStatus,
    Kind,
    OtaArtifact,
    ProfileEvent,
    StepReason,
)
from agent.platforms.base import Platform
from agent.protocol import Credentials, ProfileDoc, Request
from agent.runtime.artifacts import DeviceArtifacts
from agent.runtime.downloads import DownloadError
from agent.runtime.image_trust import ImageTrust

log = structlog.get_logger("agent.profiles")
MAX_ROUNDS = 10
# what a pass with nothing to plan returns (frozen, its mapping read-only: shared)
NOTHING_PLANNED = Plan(progress=MappingProxyType({}))
A = TypeVar("A", ApkArtifact, OtaArtifact)

# (how to build the request from the current credentials, its name) -> the answer's data
DeviceCall = Callable[[Callable[[Credentials], Request], str], Awaitable[Any]]


class ProgressState(Protocol):
    """What the runner remembers across restarts (fields of the agent's durable state)."""

    progress: dict[str, dict[str, Any]]  # profile uuid -> {updated, occurrence, items, reported}
    pending_boot: dict[str, Any]  # the image waiting for its boot; {} when none


class ProfileRunner:
    __slots__ = (
        "_reported_deferrals",
        "artifacts",
        "call",
        "checkin_needed",
        "clock",
        "commit",
        "deferrals",
        "emit",
        "platform",
        "profiles",
        "save",
        "state",
        "trust",
    )

    def __init__(
        self,
        *,
        platform: Platform,
        clock: Clock,
        call: DeviceCall,
        emit: Callable[[ProfileEvent], object],
        state: ProgressState,
        save: Callable[[], None],
        commit: Callable[[], Awaitable[None]],
        artifacts: DeviceArtifacts,
        trust: ImageTrust | None = None,
    ) -> None:
        """`emit` queues an event for the server; `save` stages `state` after a change;
        `commit` makes what was staged (and the events emitted) durable, awaited before every
        irreversible change to the device (install, apply an image, reboot); `trust`: the
        certificates images must be signed by (None: images are not checked)."""
        self.platform = platform
        self.clock = clock
        self.call = call
        self.emit = emit
        self.state = state
        self.save = save
        self.commit = commit
        self.artifacts = artifacts
        self.trust = trust
        self.profiles: list[ProfileDoc] = []
        self.deferrals: tuple[Deferral, ...] = ()
        # frozen: an agent with nothing deferred holds the one shared empty frozenset
        self._reported_deferrals: frozenset[tuple[str, str, str]] = frozenset()
        self.checkin_needed = False  # a new build runs: the server must hear of it first

    # -- loading -----------------------------------------------------------------------------

    async def refresh(self, refs: list[tuple[str, int]]) -> None:
        """Load the profile documents when the check-in's (uuid, updated) list changed."""
        if refs == [(p.uuid, p.updated) for p in self.profiles]:
            return
        self.profiles = protocol.parse_profiles(await self.call(protocol.profiles, "profiles"))

    # -- one pass ----------------------------------------------------------------------------

    async def conditions(self, online: bool) -> Conditions:
        power = await self.platform.power()
        return Conditions(
            ac=power.ac,
            sleeping=await self.platform.sleeping(),
            online=online,
            network=await self.platform.network(),
            local_minutes=local_minutes_of(self.clock.now_ms(), self.clock.utc_offset_minutes()),
        )

    def _progress(self) -> dict[str, ProfileProgress]:
        return {
            uuid: ProfileProgress(
                updated=p["updated"], occurrence=p["occurrence"], items=p.get("items", {})
            )
            for uuid, p in self.state.progress.items()
        }

    async def apply(self, online: bool = True) -> Plan:
        """Plan and act until nothing more can be done now; returns the last plan."""
        await self.confirm_boot()
        self.checkin_needed = False
        if not self.profiles and not self.state.progress:
            self.deferrals = ()  # no profile, no progress to wind up: nothing to plan
            self._report_deferrals(())
            return NOTHING_PLANNED
        result = NOTHING_PLANNED
        for _ in range(MAX_ROUNDS):
            result = plan(
                [(p.uuid, p.updated, p.doc) for p in self.profiles],
                await self.conditions(online),
                self._progress(),
                self.clock.now_ms(),
                self.artifacts.downloaded(),
            )
            for uuid, fresh in result.progress.items():
                self.state.progress[uuid] = {**asdict(fresh), "items": {}, "reported": ""}
            self._report_deferrals(result.deferrals)
            self._report_completed(result.completed)
            self.save()
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
        self,
        profile: str,
        kind: Kind,
        target: str,
        status: EventStatus,
        reason: str = "",
        *,
        version_code: int | None = None,
        build: str | None = None,
    ) -> None:
        self.emit(
            ProfileEvent(
                profile=profile,
                kind=kind,
                target=target,
                status=status,
                reason=reason,
                version_code=version_code,
                build=build,
            )
        )

    def _item_status(self, profile: str, key: str) -> ItemStatus | None:
        return ItemStatus.read(self.state.progress[profile].get("items", {}).get(key))

    def _record(self, action: Action, status: ItemStatus) -> None:
        """Remember the item's status in the profile's progress (staged)."""
        progress = self.state.progress[action.profile]
        progress.setdefault("items", {})[action.key] = status.value
        self.save()

    def _report_deferrals(self, deferrals: tuple[Deferral, ...]) -> None:
        if not deferrals and not self._reported_deferrals:
            return  # the usual cycle: nothing deferred, now or before
        current = {(d.profile, d.key, str(d.reason)) for d in deferrals}
        for profile, key, reason in sorted(current - self._reported_deferrals):
            kind = Kind.PROFILE if key == "profile" else Kind(key.split(":")[0])
            self._event(profile, kind, key.partition(":")[2], EventStatus.DEFERRED, reason)
            log.info("profile.deferred", profile=profile, item=key, reason=reason)
        self._reported_deferrals = frozenset(current)

    def _report_completed(self, completed: tuple[str, ...]) -> None:
        for uuid in completed:
            progress = self.state.progress.get(uuid)
            if progress is None:
                continue
            marker = f"{progress['updated']}:{progress['occurrence']}"
            if progress.get("reported") == marker:
                continue
            failed = [
                key
                for key, status in progress.get("items", {}).items()
                if ItemStatus.read(status) is ItemStatus.FAILED
            ]
            status = EventStatus.FAILED if failed else EventStatus.APPLIED
            self._event(uuid, Kind.PROFILE, "", status, ",".join(failed))
            progress["reported"] = marker
            log.info("profile.done", profile=uuid, failed=failed)

    # -- actions -----------------------------------------------------------------------------

    async def _act(self, action: Action) -> None:
        try:
            if action.consent and not await self.platform.consent(action.key):
                self._event(
                    action.profile,
                    action.kind,
                    action.target,
                    EventStatus.DEFERRED,
                    StepReason.CONSENT,
                )
                return
            if action.kind == Kind.APP:
                await self._app(action)
            elif action.kind == Kind.OTA:
                await self._ota(action)
            else:
                await self.platform.apply_settings(dict(action.options))
                self._event(action.profile, Kind.SETTINGS, "", EventStatus.APPLIED)
                self._record(action, ItemStatus.APPLIED)
        except (DownloadError, ApkError, OtaPackageError, PlatformError) as exc:
            reason = str(getattr(exc, "reason", type(exc).__name__))
            self._event(action.profile, action.kind, action.target, EventStatus.FAILED, reason)
            self._record(action, ItemStatus.FAILED)
            log.warning("profile.step_failed", item=action.key, error=str(exc))

    async def _download(
        self, action: Action, file_uuid: str, fetch: Callable[[str], Awaitable[A]]
    ) -> A:
        self._event(action.profile, action.kind, file_uuid, EventStatus.DOWNLOADING)
        self._record(action, ItemStatus.DOWNLOADING)
        artifact = await fetch(file_uuid)
        self._event(action.profile, action.kind, file_uuid, EventStatus.DOWNLOADED)
        return artifact

    async def _app(self, action: Action) -> None:
        apk = await self._download(action, action.target, self.artifacts.app)
        meta = apk.metadata
        installed = {a.package_name: a for a in await self.platform.installed_apps()}
        current = installed.get(meta.package_name)
        if current is not None and current.cert_md5 and meta.cert_md5 != current.cert_md5:
            self._event(
                action.profile,
                Kind.APP,
                meta.package_name,
                EventStatus.FAILED,
                StepReason.CERT_MISMATCH,
                version_code=meta.version_code,
            )
            self._record(action, ItemStatus.FAILED)
            return
        if current is not None and (current.version_code or 0) >= meta.version_code:
            self._event(
                action.profile,
                Kind.APP,
                meta.package_name,
                EventStatus.SKIPPED,
                StepReason.ALREADY_INSTALLED,
                version_code=current.version_code,
            )
            self._record(action, ItemStatus.SKIPPED)
            return
        self._event(
            action.profile,
            Kind.APP,
            meta.package_name,
            EventStatus.INSTALLING,
            version_code=meta.version_code,
        )
        await self.commit()  # durable before the device changes
        await self.platform.install_app(apk, grant_all=bool(action.options.get("grant_all")))
        self._event(
            action.profile,
            Kind.APP,
            meta.package_name,
            EventStatus.INSTALLED,
            version_code=meta.version_code,
        )
        self._record(action, ItemStatus.INSTALLED)
        if action.options.get("starts_on_update"):
            await self.platform.launch(meta.package_name)
        if action.options.get("reboots_on_update"):
            await self.commit()
            await self.platform.reboot()

    async def _ota(self, action: Action) -> None:
        offer = protocol.parse_ota_offer(
            await self.call(lambda creds: protocol.ota_next(creds, action.profile), "ota_next")
        )
        if offer.file_uuid is None:
            if offer.reason == StepReason.NOT_BEFORE:
                self._event(action.profile, Kind.OTA, "", EventStatus.DEFERRED, offer.reason)
                return
            stepped = self._item_status(action.profile, action.key) in (
                ItemStatus.INSTALLED,
                ItemStatus.STEP_INSTALLED,
            )
            self._event(
                action.profile,
                Kind.OTA,
                "",
                EventStatus.APPLIED if stepped else EventStatus.SKIPPED,
                offer.reason,
            )
            self._record(action, ItemStatus.APPLIED if stepped else ItemStatus.SKIPPED)
            return
        file_uuid = offer.file_uuid
        build = await self.platform.build()
        image = await self._download(action, file_uuid, self.artifacts.image)
        meta = image.metadata
        foreign = (
            (meta.pre_devices and build.device_id not in meta.pre_devices)
            or offer.ab_update != build.ab_update
            or (meta.pre_build and meta.pre_build != build.fingerprint)
        )
        if foreign:
            self._event(
                action.profile,
                Kind.OTA,
                file_uuid,
                EventStatus.FAILED,
                StepReason.NOT_FOR_DEVICE,
                build=meta.post_build,
            )
            self._record(action, ItemStatus.FAILED)
            return
        if self.trust is not None and (problem := await self.trust.problem(meta.signature)):
            self._event(
                action.profile,
                Kind.OTA,
                file_uuid,
                EventStatus.FAILED,
                StepReason.BAD_SIGNATURE,
                build=meta.post_build,
            )
            self._record(action, ItemStatus.FAILED)
            log.warning(
                "ota.bad_signature", target=file_uuid, problem=problem, trust=self.trust.source
            )
            return
        self._event(
            action.profile, Kind.OTA, file_uuid, EventStatus.INSTALLING, build=meta.post_build
        )
        await self.commit()  # durable before the device changes
        await self.platform.apply_ota(image, ab_update=build.ab_update)
        self.state.pending_boot = {
            "profile": action.profile,
            "target": file_uuid,
            "expected": meta.post_build,
            "previous": build.fingerprint,
        }
        self._record(action, ItemStatus.INSTALLING)
        await self.commit()  # the pending boot is durable before the reboot
        await self.platform.reboot()
        await self.confirm_boot()

    async def confirm_boot(self) -> None:
        """After the reboot: the new build is running (installed) or it is not (rollback)."""
        pending = self.state.pending_boot
        if not pending:
            return
        build = await self.platform.build()
        profile, target = pending["profile"], pending["target"]
        self.state.pending_boot = {}
        if profile in self.state.progress:
            items = self.state.progress[profile].setdefault("items", {})
        else:
            items = {}
        if build.fingerprint == pending["expected"]:
            self._event(profile, Kind.OTA, target, EventStatus.INSTALLED, build=build.fingerprint)
            items["ota"] = ItemStatus.STEP_INSTALLED.value  # a chain may have more steps
            self.checkin_needed = True
        else:
            await self.platform.rollback()
            self._event(
                profile,
                Kind.OTA,
                target,
                EventStatus.FAILED,
                StepReason.ROLLBACK,
                build=build.fingerprint,
            )
            items["ota"] = ItemStatus.FAILED.value
        self.save()
        log.info("ota.confirmed", build=build.fingerprint, expected=pending["expected"])
