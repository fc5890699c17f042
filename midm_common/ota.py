"""Read `META-INF/com/android/metadata` from an OTA zip.

The one parser of the OTA package format in this project (the server's upload and the agent's
checks both call `read_ota_metadata`). The file is text, one `key=value` a line; the keys used:
`ota-type` (AB or BLOCK), `pre-device` (`|`-separated), `pre-build` (only in incrementals),
`post-build`, `post-timestamp` (seconds since epoch), `ota-downgrade`.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from midm_common.errors import OtaPackageError

METADATA_PATH = "META-INF/com/android/metadata"
_MAX_METADATA_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class OtaMetadata:
    ab_update: bool
    pre_devices: tuple[str, ...]
    pre_build: str
    post_build: str
    post_timestamp: int | None
    downgrade: bool
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def is_partial(self) -> bool:
        return bool(self.pre_build)


def parse_metadata_text(text: str) -> dict[str, str]:
    """Split the metadata file into a dict; later duplicates win, blank lines are skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise OtaPackageError(
                f"{METADATA_PATH}: line {line[:60]!r} is not key=value", reason="bad_metadata"
            )
        values[key.strip()] = value.strip()
    return values


def metadata_from_values(values: dict[str, str]) -> OtaMetadata:
    ota_type = values.get("ota-type", "").upper()
    raw_ts = values.get("post-timestamp", "")
    try:
        timestamp = int(raw_ts) if raw_ts else None
    except ValueError as exc:
        raise OtaPackageError(
            f"{METADATA_PATH}: post-timestamp {raw_ts!r} is not an integer", reason="bad_metadata"
        ) from exc
    devices = tuple(d for d in values.get("pre-device", "").split("|") if d)
    return OtaMetadata(
        ab_update=ota_type == "AB",
        pre_devices=devices,
        pre_build=values.get("pre-build", ""),
        post_build=values.get("post-build", ""),
        post_timestamp=timestamp,
        downgrade=values.get("ota-downgrade", "").lower() == "yes",
        raw=values,
    )


def read_ota_metadata(path: Path) -> OtaMetadata:
    """Parse the OTA zip at `path`; raise OtaPackageError naming the file and the reason."""
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(METADATA_PATH)
            except KeyError as exc:
                raise OtaPackageError(
                    f"{path.name}: no {METADATA_PATH} in the zip", reason="no_metadata"
                ) from exc
            if info.file_size > _MAX_METADATA_BYTES:
                raise OtaPackageError(
                    f"{path.name}: {METADATA_PATH} is implausibly large", reason="bad_metadata"
                )
            raw = archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise OtaPackageError(
            f"{path.name}: not a zip archive or truncated ({exc})", reason="bad_zip"
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OtaPackageError(
            f"{path.name}: {METADATA_PATH} is not UTF-8", reason="bad_metadata"
        ) from exc
    return metadata_from_values(parse_metadata_text(text))
