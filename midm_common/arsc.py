"""A minimal resources.arsc reader: the default-configuration string of one resource id.

androguard analyses the whole resource table to resolve one label (most of the time spent on
a small APK); this walks the chunks to the one entry instead. It understands the plain
(non-sparse) type chunks that aapt/aapt2 write; anything else returns None and the caller falls
back to androguard. Format: frameworks/base/libs/androidfw/include/androidfw/ResourceTypes.h.
"""

from __future__ import annotations

import struct

RES_STRING_POOL = 0x0001
RES_TABLE = 0x0002
RES_TABLE_PACKAGE = 0x0200
RES_TABLE_TYPE = 0x0201
NO_ENTRY = 0xFFFFFFFF
TYPE_STRING = 0x03
UTF8_FLAG = 0x100
FLAG_SPARSE = 0x01


def _string_at(data: bytes, pool: int, index: int) -> str | None:
    header_size = struct.unpack_from("<H", data, pool + 2)[0]
    count, _, flags, strings_start = struct.unpack_from("<IIII", data, pool + 8)
    if index >= count:
        return None
    offset = struct.unpack_from("<I", data, pool + header_size + 4 * index)[0]
    at = pool + strings_start + offset
    if flags & UTF8_FLAG:
        at += 2 if data[at] & 0x80 else 1  # length in UTF-16 units, skipped
        length = data[at]
        if length & 0x80:
            length = ((length & 0x7F) << 8) | data[at + 1]
            at += 2
        else:
            at += 1
        return data[at : at + length].decode("utf-8", errors="replace")
    length = struct.unpack_from("<H", data, at)[0]
    at += 2
    if length & 0x8000:
        length = ((length & 0x7FFF) << 16) | struct.unpack_from("<H", data, at)[0]
        at += 2
    return data[at : at + 2 * length].decode("utf-16-le", errors="replace")


def _default_config(data: bytes, config_at: int) -> bool:
    config_size = struct.unpack_from("<I", data, config_at)[0]
    return not any(data[config_at + 4 : config_at + config_size])


def resolve_string(data: bytes, res_id: int) -> str | None:
    """The string value of `res_id` (0xPPTTEEEE) in the default configuration, or None."""
    try:
        return _resolve(data, res_id)
    except (struct.error, IndexError):
        return None


def _resolve(data: bytes, res_id: int) -> str | None:
    package_id, type_id, entry = res_id >> 24, (res_id >> 16) & 0xFF, res_id & 0xFFFF
    kind, header_size, _ = struct.unpack_from("<HHI", data, 0)
    if kind != RES_TABLE:
        return None
    at = header_size
    global_pool = None
    while at < len(data):
        kind, chunk_header, chunk_size = struct.unpack_from("<HHI", data, at)
        if chunk_size == 0:
            return None
        if kind == RES_STRING_POOL and global_pool is None:
            global_pool = at
        elif (
            kind == RES_TABLE_PACKAGE
            and global_pool is not None
            and struct.unpack_from("<I", data, at + 8)[0] == package_id
        ):
            return _in_package(data, at, chunk_header, chunk_size, global_pool, type_id, entry)
        at += chunk_size
    return None


def _in_package(
    data: bytes, package: int, header_size: int, size: int, pool: int, type_id: int, entry: int
) -> str | None:
    at = package + header_size
    end = package + size
    fallback: str | None = None
    while at < end:
        kind, chunk_header, chunk_size = struct.unpack_from("<HHI", data, at)
        if chunk_size == 0:
            return None
        if kind == RES_TABLE_TYPE and data[at + 8] == type_id:
            flags = data[at + 9]
            count, entries_start = struct.unpack_from("<II", data, at + 12)
            if flags & FLAG_SPARSE or entry >= count:
                at += chunk_size
                continue
            offset = struct.unpack_from("<I", data, at + chunk_header + 4 * entry)[0]
            if offset != NO_ENTRY:
                item = at + entries_start + offset
                entry_size, entry_flags = struct.unpack_from("<HH", data, item)
                if not entry_flags & 0x0001:  # a simple value, not a bag
                    _, _, data_type, value = struct.unpack_from("<HBBI", data, item + entry_size)
                    if data_type == TYPE_STRING:
                        text = _string_at(data, pool, value)
                        if _default_config(data, at + 20):
                            return text
                        fallback = fallback if fallback is not None else text
        at += chunk_size
    return fallback
