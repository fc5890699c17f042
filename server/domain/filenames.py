"""File names of uploads (pure): what is stored, and how a download's Content-Disposition says it.

Stored names [ours]: the multipart filename's last path part ("/" and "\\" both separate: some
clients send a full Windows path), NFC-normalised, without control or invisible characters
(Unicode categories Cc, Cf, Cs, Zl, Zp: CR, LF, NUL, C1 controls, bidi overrides that disguise
an extension, lone surrogates), stripped of surrounding spaces, at most FILE_NAME characters
(server/limits.py; a longer name keeps its extension); "upload" when nothing is left or the
name is "." or "..". Such a name can never break a header or a path.

An upload's `name` field (a label shown in lists) is checked, not rewritten: control characters
(Cc, Zl, Zp) in it are 40001, and so is a name over UPLOAD_NAME characters.

Content-Disposition (RFC 6266): `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<the
name percent-encoded>`. The fallback folds accents away (NFKD) and replaces what is not
printable ASCII, and `"`, `\\` and `%`, with "_", so no character can end the parameter or
start another. The name is sanitised again on the way out: rows stored before these rules
download too.
"""

from __future__ import annotations

import unicodedata
import urllib.parse

from server.errors import InvalidField
from server.limits import FILE_NAME, UPLOAD_NAME

DEFAULT_NAME = "upload"
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_MAX_EXTENSION = 16
_ATTR_CHARS = "!#$&+-.^_`|~"  # RFC 5987 attr-char besides letters and digits
_FALLBACK_REPLACED = frozenset('"\\%')


def sanitize_file_name(raw: str | None) -> str:
    """The name to store for a multipart `filename` (None: the part had none)."""
    if not raw:
        return DEFAULT_NAME
    last = raw.replace("\\", "/").rsplit("/", 1)[-1]
    text = unicodedata.normalize("NFC", last)
    text = "".join(c for c in text if unicodedata.category(c) not in _REMOVED_CATEGORIES)
    text = text.strip()
    if text in ("", ".", ".."):
        return DEFAULT_NAME
    return _shorten(text, FILE_NAME)


def check_display_name(text: str, field: str = "name") -> str:
    """`text` stripped, if it is a label a list can show; else InvalidField naming `field`."""
    name = text.strip()
    if len(name) > UPLOAD_NAME:
        raise InvalidField(f"{field}: longer than {UPLOAD_NAME} characters")
    if any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in name):
        raise InvalidField(f"{field}: contains control characters (line breaks, tabs, NUL)")
    return name


def _shorten(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and 0 < len(extension) <= _MAX_EXTENSION:
        return stem[: limit - len(extension) - 1] + "." + extension
    return name[:limit]


def ascii_fallback(name: str) -> str:
    """The name as printable ASCII for the plain `filename` parameter."""
    out = []
    for char in unicodedata.normalize("NFKD", name):
        if unicodedata.combining(char):
            continue
        if " " <= char <= "~" and char not in _FALLBACK_REPLACED:
            out.append(char)
        else:
            out.append("_")
    return "".join(out)


def content_disposition(stored_name: str) -> str:
    """`attachment` with both filename parameters (RFC 6266 section 4.3)."""
    name = sanitize_file_name(stored_name)
    encoded = urllib.parse.quote(name, safe=_ATTR_CHARS)
    return f"attachment; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{encoded}"
