"""Hostile zips built in tests: bombs that declare their size or lie about it, many entries.

`raw_zip` writes local headers and the central directory by hand, so a test can make an entry's
declared sizes say anything; `zeros_deflated(n)` is n zero bytes as a raw deflate stream (about
n / 1000 bytes). Everything is small on disk and in memory: the bombs only inflate.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

from tests.helpers import APKS

MANIFEST = "AndroidManifest.xml"
OTA_METADATA = "META-INF/com/android/metadata"
OTA_TEXT = b"ota-type=AB\npre-device=walleye\npost-build=acme/walleye:14/UP1A/200:user/release\n"


def zeros_deflated(size: int, prefix: bytes = b"") -> bytes:
    """`prefix` then zero bytes up to `size` bytes, as a raw deflate stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(prefix)]
    block = bytes(1 << 20)
    left = size - len(prefix)
    while left > 0:
        parts.append(compressor.compress(block[: min(left, len(block))]))
        left -= len(block)
    parts.append(compressor.flush())
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class RawEntry:
    name: str
    data: bytes  # as stored in the zip (already deflated when method is 8)
    method: int = 8
    declared: int | None = None  # inflated size the headers claim; None: len of the real data
    real_size: int = 0  # inflated size, for the CRC-free headers (0: unknown, crc 0)
    crc: int = 0


def raw_zip(entries: list[RawEntry]) -> bytes:
    """A zip whose headers say what each RawEntry says (sizes may lie; no data descriptors)."""
    body = bytearray()
    directory = bytearray()
    for entry in entries:
        name = entry.name.encode()
        declared = entry.declared if entry.declared is not None else entry.real_size
        offset = len(body)
        body += struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            20,
            0,
            entry.method,
            0,
            0,
            entry.crc,
            len(entry.data),
            declared,
            len(name),
            0,
        )
        body += name + entry.data
        directory += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            0,
            entry.method,
            0,
            0,
            entry.crc,
            len(entry.data),
            declared,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        directory += name
    end = struct.pack(
        "<4sHHHHIIH",
        b"PK\x05\x06",
        0,
        0,
        len(entries),
        len(entries),
        len(directory),
        len(body),
        0,
    )
    return bytes(body + directory + end)


def declared_bomb(name: str, size: int) -> bytes:
    """A zip (Python's writer, zip64) whose `name` honestly declares `size` zero bytes."""
    buffer = io.BytesIO()
    archive = zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED)
    with archive, archive.open(name, "w", force_zip64=True) as entry:
        block = bytes(1 << 20)
        for _ in range(size // len(block)):
            entry.write(block)
    return buffer.getvalue()


def lying_bomb(name: str, size: int, declared: int = 100, prefix: bytes = b"") -> bytes:
    """A zip whose `name` declares `declared` bytes but inflates to `size` (prefix + zeros)."""
    return raw_zip([RawEntry(name, zeros_deflated(size, prefix), declared=declared)])


def with_entry(fixture: str, name: str, data: bytes, *, stored: bool = False) -> bytes:
    """The fixture APK rebuilt with `name` replaced by `data` (its v2 block is dropped; the v1
    signature files stay, so the APK still has a certificate)."""
    source = zipfile.ZipFile(APKS / fixture)
    buffer = io.BytesIO()
    with source, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if info.filename != name:
                out.writestr(info.filename, source.read(info))
        method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        out.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def many_entries(count: int, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip of `count` empty files plus `extra`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
        for index in range(count):
            archive.writestr(f"assets/{index}", b"")
    return buffer.getvalue()


def apk_with_version_code(version_code: str | int, package: str = "com.example.vc") -> bytes:
    """A signed APK (the simulator's generator) whose manifest's versionCode is `version_code`
    as written: a string attribute for a str, as a hostile or hand-made manifest may hold."""
    import pytest

    from simulator.gen import apk as gen_apk
    from simulator.gen import axml

    def manifest(package: str, *_: object) -> bytes:
        return axml.encode(
            axml.Element(
                name="manifest",
                attributes={"android:versionCode": version_code, "package": package},
                children=(axml.Element(name="application", attributes={"android:hasCode": False}),),
            )
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gen_apk, "manifest_xml", manifest)
        return gen_apk.build_apk(package=package, version_code=1)
