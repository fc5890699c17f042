"""The zip writer of the generators: fixed metadata, so the same entries give the same bytes.

Entries are written in the order given, with a fixed date, no extended attributes and no archive
comment (the APK v2 signer relies on the end record being the last 22 bytes). Stored entries get
their data 4-byte aligned with zipalign's extra field (0xD935), as Android wants for files it maps.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass

_ALIGN_EXTRA_ID = 0xD935
_ALIGNMENT = 4


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    data: bytes
    stored: bool = False  # ZIP_STORED (aligned) instead of ZIP_DEFLATED


def build_zip(entries: list[Entry], *, date_time: tuple[int, int, int, int, int, int]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=date_time)
            info.create_system = 0
            info.external_attr = 0
            info.compress_type = zipfile.ZIP_STORED if entry.stored else zipfile.ZIP_DEFLATED
            if entry.stored:
                # local header (30) + name + the extra's own 6 bytes, then padding to align
                start = buffer.tell() + 30 + len(entry.name.encode()) + 6
                pad = -start % _ALIGNMENT
                info.extra = struct.pack("<HHH", _ALIGN_EXTRA_ID, 2 + pad, _ALIGNMENT) + bytes(pad)
            archive.writestr(info, entry.data)
    return buffer.getvalue()
