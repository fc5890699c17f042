"""`GET /ota/api/file/{fileUuid}` (§4): bytes with Range (206), ETag (the sha256) and checksum.

Admin or device credentials of the file's site. `If-None-Match` with the ETag gives 304;
`If-Range` with another ETag sends the whole file. An unsatisfiable range is HTTP 416 with the
error envelope, code 41600 [ours: HTTP status x 100, as for 405] and `Content-Range: bytes */N`.
Range positions are ASCII digits of any length (server.domain.ranges); Content-Disposition
follows RFC 6266 with the name sanitised again (server.domain.filenames), so no stored name can
break the header.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from server.context import services_of
from server.domain.filenames import content_disposition
from server.domain.ranges import Unsatisfiable, parse_range
from server.errors import ApiError, NotFound
from server.handlers.request import file_access, site
from server.store import catalog
from server.wire import error_response

CHUNK = 256 * 1024


class RangeNotSatisfiable(ApiError):
    code, status = 41600, 416


@file_access
async def download(request: web.Request) -> web.StreamResponse:
    services = services_of(request)
    file_uuid = request.match_info["fileUuid"]
    stored = await catalog.get_file(services.db, site(request).uuid, file_uuid)
    if stored is None:
        raise NotFound(f"fileUuid: no file {file_uuid!r} in this site")
    path = services.blobs.path_for(stored.sha256)
    etag = f'"{stored.sha256}"'
    headers = {
        "ETag": etag,
        "X-Checksum-SHA256": stored.sha256,
        "Accept-Ranges": "bytes",
        "Content-Type": stored.content_type,
        "Content-Disposition": content_disposition(stored.file_name),
    }
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        range_header = None
    try:
        span = parse_range(range_header, stored.length)
    except Unsatisfiable:
        response = error_response(
            RangeNotSatisfiable(
                f"Range {range_header!r} is outside the file's {stored.length} bytes"
            )
        )
        response.headers["Content-Range"] = f"bytes */{stored.length}"
        return response
    first, last = span if span is not None else (0, stored.length - 1)
    status = 206 if span is not None else 200
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{stored.length}"
    stream = web.StreamResponse(status=status, headers=headers)
    stream.content_length = last - first + 1
    loop = asyncio.get_running_loop()
    try:
        handle = await loop.run_in_executor(None, path.open, "rb")
    except FileNotFoundError as exc:
        raise ApiError(f"file {file_uuid!r} is registered but its bytes are missing") from exc
    try:
        await stream.prepare(request)
        await loop.run_in_executor(None, handle.seek, first)
        remaining = last - first + 1
        while remaining > 0:
            chunk = await loop.run_in_executor(None, handle.read, min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            await stream.write(chunk)
        await stream.write_eof()
    finally:
        handle.close()
    return stream
