"""Multipart upload intake shared by app and OTA uploads: stream `file`, collect small fields.

The `file` part streams into the blob store's temp area with the size limit enforced while
reading (its name sanitised: server.domain.filenames). Other parts are text fields read whole,
however the client's writes cut them (one read_chunk() is whatever has arrived), of at most
UPLOAD_FIELD_BYTES (server/limits.py) each: a longer one, a field given twice, an unknown field
or text that is not UTF-8 is 40001 naming it [ours: 40001, not 41300, as for any bad field; the
body as a whole is bounded by max_upload_bytes]. A request that is not multipart/form-data, a
malformed body (aiohttp's own refusals: too many part headers, a line too long) or no `file`
part is 40001. Whatever was received of a refused upload is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from server.blobs import Received
from server.context import services_of
from server.errors import InvalidField, TooLarge
from server.limits import UPLOAD_FIELD_BYTES

FIELD_LIMIT = UPLOAD_FIELD_BYTES


@dataclass(slots=True)
class Upload:
    file: Received
    fields: dict[str, str]


async def read_upload(request: web.Request, allowed_fields: frozenset[str]) -> Upload:
    services = services_of(request)
    blobs, limit = services.blobs, services.config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + FIELD_LIMIT:
        raise TooLarge(f"upload of {request.content_length} bytes is over the limit of {limit}")
    if not request.content_type.startswith("multipart/"):
        raise InvalidField("body: must be multipart/form-data with a 'file' part")
    received: Received | None = None
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidField("body: nested multipart is not supported")
            name = part.name or ""
            if name == "file":
                if received is not None:
                    raise InvalidField("file: only one file per upload")
                received = await blobs.receive(part, limit)
            elif name in allowed_fields:
                if name in fields:
                    raise InvalidField(f"{name}: given twice")
                fields[name] = await _read_field(part, name)
            else:
                raise InvalidField(
                    f"{name or '(unnamed part)'}: unknown form field; expected file, "
                    + ", ".join(sorted(allowed_fields))
                )
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's multipart parser's refusals
        if received is not None:
            blobs.discard(received)
        detail = (getattr(exc, "message", None) or str(exc))[:200]
        raise InvalidField(f"body: malformed multipart/form-data ({detail})") from exc
    except BaseException:
        if received is not None:
            blobs.discard(received)
        raise
    if received is None:
        raise InvalidField("file: the upload has no 'file' part")
    if received.length == 0:
        blobs.discard(received)
        raise InvalidField("file: the uploaded file is empty")
    return Upload(file=received, fields=fields)


async def _read_field(part: BodyPartReader, name: str) -> str:
    """The whole text of a field part, refused once past FIELD_LIMIT bytes."""
    raw = bytearray()
    while chunk := await part.read_chunk(FIELD_LIMIT + 1):  # not less: aiohttp wants a
        # chunk at least as long as the boundary
        raw += chunk
        if len(raw) > FIELD_LIMIT:
            raise InvalidField(f"{name}: longer than {FIELD_LIMIT} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidField(f"{name}: is not UTF-8 text") from exc


def form_bool(fields: dict[str, str], key: str, default: bool) -> bool:
    raw = fields.get(key)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidField(f"{key}: must be true or false, not {raw!r}")
