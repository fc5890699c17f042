"""Android binary XML (AXML), the compiled form of AndroidManifest.xml, written from a tiny tree.

Theory of operation (frameworks/base/libs/androidfw/ResourceTypes.h): a RES_XML_TYPE chunk holds
a UTF-16 string pool, a resource map (the android: resource id of each attribute name, for the
first N strings of the pool), then a flat stream of namespace-start, element-start/end and
namespace-end chunks. Attributes carry a typed value (string, decimal int, boolean). Android
looks attributes up by resource id with a merge walk, so each element's attributes are written
sorted by resource id, unnamespaced ones (e.g. `package`) last, as aapt does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ANDROID_NS = "http://schemas.android.com/apk/res/android"

# The framework's public attribute ids (android.R.attr), as aapt writes them.
ATTRIBUTE_IDS: dict[str, int] = {
    "label": 0x01010001,
    "hasCode": 0x0101000C,
    "minSdkVersion": 0x0101020C,
    "versionCode": 0x0101021B,
    "versionName": 0x0101021C,
    "targetSdkVersion": 0x01010270,
    "maxSdkVersion": 0x01010271,
}

_RES_STRING_POOL = 0x0001
_RES_XML = 0x0003
_RES_XML_START_NAMESPACE = 0x0100
_RES_XML_END_NAMESPACE = 0x0101
_RES_XML_START_ELEMENT = 0x0102
_RES_XML_END_ELEMENT = 0x0103
_RES_XML_RESOURCE_MAP = 0x0180
_TYPE_STRING = 0x03
_TYPE_INT_DEC = 0x10
_TYPE_INT_BOOLEAN = 0x12
_NO_INDEX = 0xFFFFFFFF

Value = str | int | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Element:
    """An element; attribute names without a prefix are unnamespaced, `android:x` are android's."""

    name: str
    attributes: dict[str, Value] = field(default_factory=dict)
    children: tuple[Element, ...] = ()


def encode(root: Element) -> bytes:
    """The AXML bytes of the document whose root is `root` (with xmlns:android declared)."""
    pool = _Pool(_attribute_names(root))
    body = bytearray()
    line = _Line()
    namespace = struct.pack("<II", pool.add("android"), pool.add(ANDROID_NS))
    body += _node(_RES_XML_START_NAMESPACE, line.next(), namespace)
    _element(root, pool, body, line)
    body += _node(_RES_XML_END_NAMESPACE, line.next(), namespace)
    strings = pool.encode()
    resource_map = b"".join(struct.pack("<I", ATTRIBUTE_IDS[n]) for n in pool.mapped)
    return _chunk(_RES_XML, b"", strings + _chunk(_RES_XML_RESOURCE_MAP, b"", resource_map) + body)


def _attribute_names(root: Element) -> list[str]:
    """The android: attribute names used, by resource id: they open the pool (resource map)."""
    names: set[str] = set()
    stack = [root]
    while stack:
        element = stack.pop()
        for key in element.attributes:
            prefix, _, local = key.rpartition(":")
            if prefix == "android":
                if local not in ATTRIBUTE_IDS:
                    raise ValueError(f"android:{local}: no resource id known for this attribute")
                names.add(local)
        stack.extend(element.children)
    return sorted(names, key=ATTRIBUTE_IDS.__getitem__)


def _element(element: Element, pool: _Pool, out: bytearray, line: _Line) -> None:
    attributes = sorted(element.attributes.items(), key=_attribute_order)
    encoded = bytearray()
    for key, value in attributes:
        prefix, _, local = key.rpartition(":")
        ns = pool.add(ANDROID_NS) if prefix == "android" else _NO_INDEX
        name = pool.add(local)
        if isinstance(value, bool):
            raw, kind, data = _NO_INDEX, _TYPE_INT_BOOLEAN, 0xFFFFFFFF if value else 0
        elif isinstance(value, int):
            raw, kind, data = _NO_INDEX, _TYPE_INT_DEC, value & 0xFFFFFFFF
        else:
            raw = data = pool.add(value)
            kind = _TYPE_STRING
        encoded += struct.pack("<IIIHBBI", ns, name, raw, 8, 0, kind, data)
    name_index = pool.add(element.name)
    # ResXMLTree_attrExt: ns, name, attributeStart, attributeSize, count, id/class/style index
    ext = struct.pack("<IIHHHHHH", _NO_INDEX, name_index, 20, 20, len(attributes), 0, 0, 0)
    out += _node(_RES_XML_START_ELEMENT, line.next(), ext + encoded)
    for child in element.children:
        _element(child, pool, out, line)
    out += _node(_RES_XML_END_ELEMENT, line.next(), struct.pack("<II", _NO_INDEX, name_index))


def _attribute_order(item: tuple[str, Value]) -> tuple[int, str]:
    prefix, _, local = item[0].rpartition(":")
    if prefix == "android":
        return ATTRIBUTE_IDS[local], ""
    return 1 << 32, item[0]


class _Line:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


class _Pool:
    """A UTF-16 string pool; the first strings are the resource-mapped attribute names."""

    __slots__ = ("index", "mapped", "strings")

    def __init__(self, mapped: list[str]) -> None:
        self.mapped = mapped
        self.strings: list[str] = []
        self.index: dict[str, int] = {}
        for name in mapped:
            self.add(name)

    def add(self, text: str) -> int:
        found = self.index.get(text)
        if found is None:
            found = self.index[text] = len(self.strings)
            self.strings.append(text)
        return found

    def encode(self) -> bytes:
        offsets = bytearray()
        data = bytearray()
        for text in self.strings:
            offsets += struct.pack("<I", len(data))
            units = text.encode("utf-16-le")
            count = len(units) // 2
            if count > 0x7FFF:
                data += struct.pack("<HH", 0x8000 | (count >> 16), count & 0xFFFF)
            else:
                data += struct.pack("<H", count)
            data += units + b"\x00\x00"
        data += b"\x00" * (-len(data) % 4)
        header_size = 28
        strings_start = header_size + len(offsets)
        header = struct.pack("<IIIII", len(self.strings), 0, 0, strings_start, 0)
        return _chunk(_RES_STRING_POOL, header, bytes(offsets) + bytes(data))


def _node(kind: int, line: int, payload: bytes) -> bytes:
    """An XML tree node chunk: ResXMLTree_node (line number, no comment) then its extension."""
    return _chunk(kind, struct.pack("<II", line, _NO_INDEX), payload)


def _chunk(kind: int, header: bytes, payload: bytes) -> bytes:
    header_size = 8 + len(header)
    return struct.pack("<HHI", kind, header_size, header_size + len(payload)) + header + payload
