"""Read `META-INF/com/android/metadata` from an OTA zip.

The one parser of the OTA package format in this project (the server's upload and the agent's
checks both call `read_ota_metadata`). The file is text, one `key=value` a line; the keys used:
`ota-type` (AB or BLOCK), `pre-device` (`|`-separated), `pre-build` (only in incrementals),
`post-build`, `post-timestamp` (seconds since epoch), `ota-downgrade`.

The zip is read with midm_common.zipguard, within `ZipLimits` (the caller's, else the defaults):
at most `max_entries` entries, the metadata at most `max_ota_metadata_bytes` inflated and, past
`ratio_grace`, at most `max_ratio` times its compressed size, whatever its headers declare; its
CRC and declared size must match what it inflates to. Refusals name the entry and the limit.

The package's whole-file signature (midm_common.ota_signature) is read too, after the metadata,
and kept in `OtaMetadata.signature`: UNSIGNED, VALID (with the signer's certificate), or INVALID
with a reason. A bad signature is not raised here: the server refuses it at upload (40001), the
agent refuses it at install only when it verifies images (`--ota-certs`). Reading it hashes the
whole file once, in bounded memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from midm_common import zipguard
from midm_common.errors import OtaPackageError
from midm_common.ota_signature import UNSIGNED, OtaSignature, read_signature
from midm_common.zipguard import DEFAULT_LIMITS, ZipLimits

METADATA_PATH = "META-INF/com/android/metadata"


@dataclass(frozen=True, slots=True, kw_only=True)
class OtaMetadata:
    ab_update: bool
    pre_devices: tuple[str, ...]
    pre_build: str
    post_build: str
    post_timestamp: int | None
    downgrade: bool
    raw: dict[str, str] = field(default_factory=dict)
    signature: OtaSignature = UNSIGNED

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


def read_ota_metadata(path: Path, limits: ZipLimits = DEFAULT_LIMITS) -> OtaMetadata:
    """Parse the OTA zip at `path`; raise OtaPackageError naming the file and the reason. The
    metadata is checked before the signature is read (which hashes the whole file)."""
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            meta = _parse(_metadata_bytes(handle, size, path.name, limits), path.name)
            return replace(meta, signature=read_signature(handle, size))
    except OSError as exc:
        raise OtaPackageError(
            f"{path.name}: cannot read file ({exc.strerror})", reason="unreadable"
        ) from exc


def _parse(raw: bytes, archive: str) -> OtaMetadata:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OtaPackageError(
            f"{archive}: {METADATA_PATH} is not UTF-8", reason="bad_metadata"
        ) from exc
    return metadata_from_values(parse_metadata_text(text))


def _metadata_bytes(handle: BinaryIO, size: int, archive: str, limits: ZipLimits) -> bytes:
    error = OtaPackageError
    entries = zipguard.central_directory(handle, size, limits, error, archive)
    found = [e for e in entries if e.name == METADATA_PATH]
    if not found:
        raise OtaPackageError(f"{archive}: no {METADATA_PATH} in the zip", reason="no_metadata")
    entry = found[-1]  # as zipfile: a later entry of the same name wins
    if entry.flags & 0x1:
        raise OtaPackageError(f"{archive}: {METADATA_PATH} is encrypted", reason="bad_metadata")
    limit = limits.entry_limit(METADATA_PATH)
    declared = zipguard.Declared(
        method=entry.method,
        compressed_size=entry.compressed_size,
        uncompressed_size=entry.uncompressed_size,
    )
    zipguard.check_declared(declared, METADATA_PATH, limit, limits, error, archive)
    read = zipguard.file_reader(handle, zipguard.data_offset(handle, entry, error, archive))
    if entry.method == zipguard.STORED:
        raw = zipguard.read_stored(
            read, entry.compressed_size, METADATA_PATH, limit, error, archive
        )
    elif entry.method == zipguard.DEFLATED:
        raw = zipguard.inflate(
            read, entry.compressed_size, METADATA_PATH, limit, limits, error, archive
        )
    else:
        raise OtaPackageError(
            f"{archive}: {METADATA_PATH} uses compression method {entry.method}; "
            "expected stored (0) or deflate (8)",
            reason="bad_metadata",
        )
    if len(raw) != entry.uncompressed_size or zlib.crc32(raw) != entry.crc:
        raise OtaPackageError(
            f"{archive}: not a zip archive or truncated ({METADATA_PATH}: {len(raw)} bytes "
            f"inflated, CRC or declared size {entry.uncompressed_size} does not match)",
            reason="bad_zip",
        )
    return raw
