"""OTA packages built in Python: full or partial (incremental), A/B or non-A/B (BLOCK).

Layout, as Android's ota_from_target_files writes it (and what the readers look at):
- `META-INF/com/android/metadata`: sorted `key=value` lines: `ota-type` (AB/BLOCK), `pre-device`,
  `post-build`, `post-build-incremental`, `post-timestamp`, and for a partial package `pre-build`
  and `pre-build-incremental`; `extra` adds or overrides keys (e.g. `ota-downgrade=yes`).
- A/B: `payload.bin` stored (uncompressed: update_engine reads it in place at an offset) and
  `payload_properties.txt` (FILE_HASH, FILE_SIZE, METADATA_HASH, METADATA_SIZE); the payload is
  a `CrAU` v2 header and filler, not an applicable update.
- BLOCK: `META-INF/com/google/android/updater-script` and `system.new.dat` (filler, stored).
The filler is SHAKE-256 of the package's identity: the same arguments give the same bytes.
Not done: the whole-file signature (signapk -w) of signed images.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from midm_common.ota import METADATA_PATH
from simulator.gen.archive import Entry, build_zip

ZIP_DATE = (2009, 1, 1, 0, 0, 0)  # what ota_from_target_files stamps
_PAYLOAD_HEADER = 24  # magic, major version (u64), manifest size (u64), signature size (u32)
_PAYLOAD_VERSION = 2


def build_ota(
    *,
    device: str,
    post_build: str,
    post_timestamp: int,
    pre_build: str | None = None,
    ab: bool = True,
    payload_size: int = 4096,
    extra: dict[str, str] | None = None,
) -> bytes:
    """The bytes of an OTA zip; partial (incremental) when `pre_build` is given.

    `device` is the metadata's `pre-device` (`|`-separated when several); `post_timestamp` is
    seconds since the epoch (ro.build.date.utc of the target build). Raise ValueError for
    values no reader would accept."""
    _check(device, post_build, post_timestamp, pre_build, payload_size)
    metadata = ota_metadata(
        device=device,
        post_build=post_build,
        post_timestamp=post_timestamp,
        pre_build=pre_build,
        ab=ab,
        extra=extra,
    )
    text = "".join(f"{key}={value}\n" for key, value in sorted(metadata.items()))
    seed = text.encode()
    entries = [Entry(METADATA_PATH, seed)]
    if ab:
        payload = _payload(seed, payload_size)
        entries += [
            Entry("payload.bin", payload, stored=True),
            Entry("payload_properties.txt", _payload_properties(payload), stored=True),
        ]
    else:
        script = f'ui_print("Installing {post_build}");\n'.encode()
        entries += [
            Entry("META-INF/com/google/android/updater-script", script),
            Entry("system.new.dat", hashlib.shake_256(seed).digest(payload_size), stored=True),
        ]
    return build_zip(entries, date_time=ZIP_DATE)


def ota_metadata(
    *,
    device: str,
    post_build: str,
    post_timestamp: int,
    pre_build: str | None = None,
    ab: bool = True,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The key/values of META-INF/com/android/metadata for these arguments."""
    metadata = {
        "ota-type": "AB" if ab else "BLOCK",
        "pre-device": device,
        "post-build": post_build,
        "post-build-incremental": incremental(post_build),
        "post-timestamp": str(post_timestamp),
    }
    if pre_build:
        metadata["pre-build"] = pre_build
        metadata["pre-build-incremental"] = incremental(pre_build)
    for key, value in (extra or {}).items():
        if not key or any(c in key for c in "=\n") or "\n" in value:
            raise ValueError(f"extra: {key!r}={value!r} cannot be a metadata line")
        metadata[key] = value
    return metadata


def incremental(fingerprint: str) -> str:
    """ro.build.version.incremental from a fingerprint
    `brand/product/device:release/id/incremental:type/tags` ("" when not of that shape)."""
    parts = fingerprint.split(":")
    fields = parts[1].split("/") if len(parts) == 3 else []
    return fields[2] if len(fields) == 3 else ""


def _check(
    device: str, post_build: str, post_timestamp: int, pre_build: str | None, payload_size: int
) -> None:
    for name, value in (("device", device), ("post_build", post_build), ("pre_build", pre_build)):
        if value is not None and any(c in value for c in "\n\r="):
            raise ValueError(f"{name}: {value!r} cannot be a metadata value")
    if not device or not post_build:
        raise ValueError("device and post_build: must not be empty")
    if post_timestamp < 0:
        raise ValueError(f"post_timestamp: must be seconds since the epoch, not {post_timestamp}")
    if payload_size < _PAYLOAD_HEADER:
        raise ValueError(f"payload_size: must be >= {_PAYLOAD_HEADER}, not {payload_size}")


def _payload(seed: bytes, size: int) -> bytes:
    """A payload.bin shape: `CrAU`, version 2, a manifest filling the rest, no signature."""
    manifest_size = size - _PAYLOAD_HEADER
    header = b"CrAU" + struct.pack(">QQI", _PAYLOAD_VERSION, manifest_size, 0)
    return header + hashlib.shake_256(seed).digest(manifest_size)


def _payload_properties(payload: bytes) -> bytes:
    metadata_size = len(payload)  # header + manifest: the whole filler is "metadata"
    lines = (
        f"FILE_HASH={_b64_sha256(payload)}",
        f"FILE_SIZE={len(payload)}",
        f"METADATA_HASH={_b64_sha256(payload[:metadata_size])}",
        f"METADATA_SIZE={metadata_size}",
    )
    return "".join(f"{line}\n" for line in lines).encode()


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()
