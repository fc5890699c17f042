"""Zip entries read within limits: the format readers' defence against zip bombs.

Nothing an archive declares is trusted. Theory of operation:
- Entry counts: before a table of entries is built, the central directory is walked the way the
  table's builder walks it and more than `max_entries` entries are refused (`count_apk_entries`
  for apkInspector, androguard's zip reader; `central_directory` for our own OTA reading).
- `inflate` refuses an entry whose declared inflated size is over its limit, or whose declared
  ratio (inflated / compressed) is over `max_ratio` past `ratio_grace` bytes, before inflating;
  then inflates in steps of at most STEP output bytes (zlib's max_length), checking after each
  step the bytes produced against the limit and the ratio so far against `max_ratio`. Memory
  stays within limit + STEP whatever the entry claims, and a bomb is refused after `ratio_grace`
  bytes, in milliseconds.
Limits are a `ZipLimits`; `DEFAULT_LIMITS` serve the agent, the server passes its own (its
server/limits.py). A refusal raises the caller's FormatError subclass with reason "over_limit",
naming the archive, the entry and the limit; a malformed archive gives reason "bad_zip".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from midm_common.errors import FormatError

STEP = 64 * 1024  # output bytes one inflate step may produce
_READ = 64 * 1024  # compressed bytes read at a time
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_CENTRAL_FIXED = struct.Struct("<4s6H3L5H2L")  # 46 bytes
_EOCD_FIXED = struct.Struct("<4s4H2LH")  # 22 bytes
_EOCD64_FIXED = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_ZIP64_EXTRA = 0x0001
STORED, DEFLATED = 0, 8

ErrorType = type[FormatError]


@dataclass(frozen=True, slots=True, kw_only=True)
class ZipLimits:
    """What a reader may inflate. The defaults are the agent's; the server passes its own."""

    max_entries: int = 65_535  # entries in the central directory (zip32's own maximum)
    max_ratio: int = 100  # inflated / compressed bytes of one entry, past ratio_grace
    ratio_grace: int = 1 << 20  # inflated bytes of an entry before the ratio applies
    max_entry_bytes: int = 8 << 20  # any entry not named below (v1 signature files)
    max_manifest_bytes: int = 4 << 20  # AndroidManifest.xml
    max_arsc_bytes: int = 32 << 20  # resources.arsc
    max_ota_metadata_bytes: int = 1 << 20  # META-INF/com/android/metadata

    def entry_limit(self, name: str) -> int:
        named = {
            "AndroidManifest.xml": self.max_manifest_bytes,
            "resources.arsc": self.max_arsc_bytes,
            "META-INF/com/android/metadata": self.max_ota_metadata_bytes,
        }
        return named.get(name, self.max_entry_bytes)


DEFAULT_LIMITS = ZipLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One central-directory entry (zip64 sizes and offset resolved)."""

    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    uncompressed_size: int
    local_offset: int


def _bad(error: ErrorType, archive: str, what: str) -> FormatError:
    return error(f"{archive}: not a zip archive or truncated ({what})", reason="bad_zip")


def _too_many(error: ErrorType, archive: str, limit: int) -> FormatError:
    return error(
        f"{archive}: more than {limit} entries in the zip (limit {limit})", reason="over_limit"
    )


def count_apk_entries(
    f: BinaryIO, size: int, limits: ZipLimits, error: ErrorType, archive: str
) -> int:
    """Entries apkInspector (androguard's zip reader) will parse, refused past max_entries.

    As apkInspector does: the end record is the last "PK\\5\\6" in the file, and the walk goes
    from its directory offset entry after entry while the signature holds."""
    at = _last_signature(f, size, _EOCD)
    if at < 0:
        raise _bad(error, archive, "no end of central directory record")
    f.seek(at)
    record = f.read(_EOCD_FIXED.size)
    if len(record) < _EOCD_FIXED.size:
        raise _bad(error, archive, "end of central directory record cut short")
    offset = _EOCD_FIXED.unpack(record)[6]
    f.seek(offset)
    count = 0
    while True:
        fixed = f.read(_CENTRAL_FIXED.size)
        if fixed[:4] != _CENTRAL:
            return count
        if len(fixed) < _CENTRAL_FIXED.size:
            raise _bad(error, archive, "central directory entry cut short")
        count += 1
        if count > limits.max_entries:
            raise _too_many(error, archive, limits.max_entries)
        fields = _CENTRAL_FIXED.unpack(fixed)
        f.seek(fields[10] + fields[11] + fields[12], 1)


def _last_signature(f: BinaryIO, size: int, signature: bytes) -> int:
    """Offset of the last `signature` in the file, read backwards in bounded chunks; -1."""
    end = size
    while end > 0:
        start = max(0, end - 1024 * 1024)
        f.seek(start)
        chunk = f.read(min(size, end + len(signature) - 1) - start)  # overlaps the last chunk
        found = chunk.rfind(signature)
        if found >= 0:
            return start + found
        end = start
    return -1


def central_directory(
    f: BinaryIO, size: int, limits: ZipLimits, error: ErrorType, archive: str
) -> list[Entry]:
    """The entries of a zip (zip64 aware, as the zip specification and Python's zipfile find
    them), refused past max_entries while walking, before any is kept beyond the limit."""
    start, length, shift = _directory_span(f, size, error, archive)
    f.seek(start)
    entries: list[Entry] = []
    walked = 0
    while walked < length:
        fixed = f.read(_CENTRAL_FIXED.size)
        if len(fixed) < _CENTRAL_FIXED.size or fixed[:4] != _CENTRAL:
            raise _bad(error, archive, "bad central directory entry")
        if len(entries) >= limits.max_entries:
            raise _too_many(error, archive, limits.max_entries)
        fields = _CENTRAL_FIXED.unpack(fixed)
        flags, method, crc, csize, usize = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len, offset = fields[10], fields[11], fields[12], fields[16]
        raw_name = f.read(name_len)
        extra = f.read(extra_len)
        f.seek(comment_len, 1)
        walked += _CENTRAL_FIXED.size + name_len + extra_len + comment_len
        usize, csize, offset = _zip64(extra, usize, csize, offset)
        offset += shift
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        entries.append(
            Entry(
                name=name,
                method=method,
                flags=flags,
                crc=crc,
                compressed_size=csize,
                uncompressed_size=usize,
                local_offset=offset,
            )
        )
    return entries


def _directory_span(f: BinaryIO, size: int, error: ErrorType, archive: str) -> tuple[int, int, int]:
    """(start, length, shift) of the central directory. The end record is the last 22 bytes when the
    archive has no comment, else the last signature in the final 64 KiB; a zip64 locator right
    before it points at the zip64 record; data prepended to the archive shifts every offset by
    `shift` (as zipfile's `concat`)."""
    tail_len = min(size, _EOCD_FIXED.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    if tail[-22:-18] == _EOCD and tail[-2:] == b"\0\0":
        at = tail_len - _EOCD_FIXED.size
    else:
        at = tail.rfind(_EOCD)
        if at < 0 or at + _EOCD_FIXED.size > tail_len:
            raise _bad(error, archive, "no end of central directory record")
    record = _EOCD_FIXED.unpack(tail[at : at + _EOCD_FIXED.size])
    location = size - tail_len + at
    length, offset = record[5], record[6]
    if location >= 20 + _EOCD64_FIXED.size:
        f.seek(location - 20)
        if f.read(4) == _EOCD64_LOCATOR:
            f.seek(location - 20 - _EOCD64_FIXED.size)
            raw = f.read(_EOCD64_FIXED.size)
            if raw[:4] == _EOCD64:
                record64 = _EOCD64_FIXED.unpack(raw)
                length, offset = record64[8], record64[9]
                location -= 20 + _EOCD64_FIXED.size
    start = location - length  # where the directory is; `offset` may ignore a prefix
    if start < 0:
        raise _bad(error, archive, "central directory outside the file")
    return start, length, start - offset


def _zip64(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        at += 4 + length
        if kind != _ZIP64_EXTRA:
            continue
        values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
        if usize == 0xFFFFFFFF and values:
            usize = values.pop(0)
        if csize == 0xFFFFFFFF and values:
            csize = values.pop(0)
        if offset == 0xFFFFFFFF and values:
            offset = values.pop(0)
    return usize, csize, offset


def data_offset(f: BinaryIO, entry: Entry, error: ErrorType, archive: str) -> int:
    """Where the entry's data starts: after its local header (whose own lengths count)."""
    f.seek(entry.local_offset)
    header = f.read(30)
    if len(header) < 30 or header[:4] != _LOCAL:
        raise _bad(error, archive, f"{entry.name}: no local header")
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return int(entry.local_offset + 30 + name_len + extra_len)


@dataclass(frozen=True, slots=True, kw_only=True)
class Declared:
    """What an entry's headers say: its method, and its compressed and inflated sizes."""

    method: int
    compressed_size: int
    uncompressed_size: int


def check_declared(
    declared: Declared, name: str, limit: int, limits: ZipLimits, error: ErrorType, archive: str
) -> None:
    """Refuse, before inflating, an entry whose headers announce too much."""
    if declared.uncompressed_size > limit:
        size = declared.uncompressed_size
        shown = f"{size} bytes or more (zip64)" if size == 0xFFFFFFFF else f"{size} bytes"
        raise error(
            f"{archive}: {name} declares {shown} inflated, over the limit of {limit} bytes",
            reason="over_limit",
        )
    if (
        declared.method != STORED
        and declared.uncompressed_size > limits.ratio_grace
        and declared.uncompressed_size > limits.max_ratio * max(declared.compressed_size, 1)
    ):
        raise error(
            f"{archive}: {name} declares a compression ratio over the limit of "
            f"{limits.max_ratio}:1",
            reason="over_limit",
        )


def read_stored(
    read: Callable[[int], bytes], size: int, name: str, limit: int, error: ErrorType, archive: str
) -> bytes:
    """`size` stored bytes, refused past `limit` (at most limit + 1 bytes are read)."""
    data = read(min(size, limit + 1))
    if len(data) > limit:
        raise _over(error, archive, name, limit)
    return data


def inflate(
    read: Callable[[int], bytes],
    compressed_size: int,
    name: str,
    limit: int,
    limits: ZipLimits,
    error: ErrorType,
    archive: str,
) -> bytes:
    """Inflate a raw deflate stream of `compressed_size` bytes read through `read`, refused as
    soon as it passes `limit` bytes or, past `ratio_grace`, `max_ratio` times the compressed
    bytes consumed. A corrupt stream, or one that ends early, is bad_zip."""
    decompressor = zlib.decompressobj(-15)
    out = bytearray()
    pending = b""
    left = compressed_size
    consumed = 0
    while not decompressor.eof:
        if not pending and left > 0:
            pending = read(min(_READ, left))
            left = left - len(pending) if pending else 0
        try:
            produced = decompressor.decompress(pending, STEP)
        except zlib.error as exc:
            raise _bad(error, archive, f"{name}: {exc}") from exc
        consumed += len(pending) - len(decompressor.unconsumed_tail)
        pending = decompressor.unconsumed_tail
        out += produced
        if len(out) > limit:
            raise _over(error, archive, name, limit)
        if len(out) > limits.ratio_grace and len(out) > limits.max_ratio * max(consumed, 1):
            raise error(
                f"{archive}: {name} inflates more than {limits.max_ratio} times its compressed "
                f"size (limit {limits.max_ratio}:1)",
                reason="over_limit",
            )
        if not produced and not pending and left <= 0:
            break
    if not decompressor.eof:
        raise _bad(error, archive, f"{name}: deflate stream cut short")
    return bytes(out)


def _over(error: ErrorType, archive: str, name: str, limit: int) -> FormatError:
    return error(f"{archive}: {name} inflates past the limit of {limit} bytes", reason="over_limit")


def file_reader(f: BinaryIO, start: int) -> Callable[[int], bytes]:
    """A `read(n)` over `f` from `start` on, unaffected by other seeks between calls."""
    position = start

    def read(n: int) -> bytes:
        nonlocal position
        f.seek(position)
        data = f.read(n)
        position += len(data)
        return data

    return read
