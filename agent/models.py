"""The agent's values: what a device is (facts, apps) and what it reports (profile events).

Frozen, slotted, keyword-only dataclasses and StrEnums; no I/O and no wire names here (the JSON
field names live in agent/protocol.py, the one wire module). Statuses and reasons are StrEnums,
so they compare equal to the strings persisted by older agents and sent on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from midm_common.apk import ApkMetadata
    from midm_common.ota import OtaMetadata


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareInfo:
    serial_no: str
    manufacturer: str = ""
    brand: str = ""
    model: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildInfo:
    fingerprint: str = ""
    build_date: int | None = None
    display_id: str = ""
    sdk: str = ""
    device_id: str = ""
    product_id: str = ""
    sku_id: str = ""
    customer_id: str = ""
    ab_update: bool = False
    slot: str = ""
    region: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerState:
    ac: bool
    battery: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AppRecord:
    """One installed app (an AppInfo of the protocol)."""

    package_name: str
    version_code: int | None = None
    label: str = ""
    version_name: str = ""
    min_sdk_version: str = ""
    target_sdk_version: str = ""
    max_sdk_version: str = ""
    cert_md5: str = ""
    app_size: int | None = None
    data_size: int | None = None
    first_installed: int | None = None
    last_updated: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFacts:
    """Everything a check-in says about the device, read once per check-in."""

    hardware: HardwareInfo
    build: BuildInfo
    power: PowerState
    network: str  # wifi, ethernet, mobile, none
    sleeping: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ApkArtifact:
    """A downloaded APK: its content's sha256 and size, its metadata (parsed once per content,
    agent.runtime.artifacts), and its file, or None when only its hash was kept (simulated)."""

    sha256: str
    size: int
    metadata: ApkMetadata
    path: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OtaArtifact:
    """A downloaded OTA package, like ApkArtifact."""

    sha256: str
    size: int
    metadata: OtaMetadata
    path: Path | None = None


class Kind(StrEnum):
    """What a profile item (and its events) is about."""

    APP = "app"
    OTA = "ota"
    SETTINGS = "settings"
    PROFILE = "profile"  # the profile as a whole


class EventStatus(StrEnum):
    """The `status` of a profile event."""

    DEFERRED = "deferred"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    APPLIED = "applied"
    FAILED = "failed"
    SKIPPED = "skipped"


class ItemStatus(StrEnum):
    """The last status of a profile item, kept in the progress across restarts."""

    DOWNLOADING = "downloading"
    INSTALLING = "installing"  # an image is installed and its boot not yet confirmed
    INSTALLED = "installed"
    APPLIED = "applied"
    FAILED = "failed"
    SKIPPED = "skipped"
    # One image of a chain runs: not done, the feed is asked for the next step (agents before
    # issue 10 wrote "stepped"; ItemStatus.read maps it).
    STEP_INSTALLED = "step_installed"

    @classmethod
    def read(cls, value: object) -> ItemStatus | None:
        """The status a progress entry holds (older names included), None for none."""
        if value == "stepped":
            return cls.STEP_INSTALLED
        try:
            return cls(str(value)) if value else None
        except ValueError:
            return None


DONE = frozenset({ItemStatus.INSTALLED, ItemStatus.APPLIED, ItemStatus.SKIPPED, ItemStatus.FAILED})


class StepReason(StrEnum):
    """Why the agent deferred, skipped or failed an item on its own account."""

    CONSENT = "consent"  # deferred: the user did not consent to a non-silent install
    ALREADY_INSTALLED = "already_installed"  # skipped: the same or a newer version is there
    CERT_MISMATCH = "cert_mismatch"  # failed: signed by another key than the installed app
    NOT_FOR_DEVICE = "not_for_device"  # failed: the image's own metadata names other devices
    ROLLBACK = "rollback"  # failed: the device did not come up on the new build
    NOT_BEFORE = "not_before"  # deferred: the feed holds the image back for now
    BAD_SIGNATURE = "bad_signature"  # failed: the image is not signed by a trusted certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileEvent:
    """One step of applying a profile, as reported to the server (sent by the outbox)."""

    profile: str
    kind: Kind
    target: str  # a fileUuid, a package name, or ""
    status: EventStatus
    reason: str = ""  # a StepReason, a deferral reason, an error's reason, failed item keys
    version_code: int | None = None
    build: str | None = None
