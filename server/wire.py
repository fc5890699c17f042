"""Wire mapping of the server: the envelope (§1), timestamps, and rows -> protocol JSON.

Every response body is built here. Stored times are integer epoch milliseconds; they go out as
ISO-8601 UTC with milliseconds and `Z`, except where the protocol shows an integer
(profile `created`/`updated` [ours: both epoch ms, as profile/save's `updated`]).

Output is strict JSON (issue 12): `dumps` refuses NaN and Infinity (a 50000 rather than a body
no client can parse; the validators keep them out of the database). A string that cannot be
encoded as UTF-8 (a lone surrogate stored by a server older than those validators) is sent
escaped (`\\udXXX`) instead of failing every read of it; `wire.unencodable_value` is logged.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import structlog
from aiohttp import web

from server import BUILD
from server.domain.presence import presence
from server.domain.times import iso as iso_ms
from server.errors import ApiError

JSON_TYPE = "application/json"
log = structlog.get_logger("server.wire")


def iso(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _ascii_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def json_response(body: Any, **kwargs: Any) -> web.Response:
    """`body` as strict JSON; see the module doc for a string UTF-8 cannot encode."""
    try:
        return web.json_response(body, dumps=dumps, **kwargs)
    except UnicodeEncodeError:
        log.warning("wire.unencodable_value", uq=body.get("uq") if isinstance(body, dict) else None)
        return web.json_response(body, dumps=_ascii_dumps, **kwargs)


def envelope(
    *,
    code: int = 0,
    message: str = "success",
    data: Any = None,
    has_data: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "uq": str(uuid.uuid4()),
        "doc_version": "latest",
        "result": code == 0,
        "code": code,
        "message": message,
        "build": BUILD,
    }
    if has_data:
        body["data"] = data
    if extra:
        body.update(extra)
    return body


def ok(
    data: Any = None, *, has_data: bool = True, message: str = "success", **extra: Any
) -> web.Response:
    body = envelope(data=data, has_data=has_data, message=message, extra=extra)
    return json_response(body)


def paged(items: Any, *, total: int, size: int, **extra: Any) -> web.Response:
    total_pages = (total + size - 1) // size
    return ok(items, totalPage=total_pages, size=size, totalSize=total, **extra)


def error_response(error: ApiError, body: dict[str, Any] | None = None) -> web.Response:
    """The error envelope of `error` (`body` when the caller built it already, for its uq)."""
    if body is None:
        body = envelope(code=error.code, message=error.message, has_data=False)
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return json_response(body, status=error.status, headers=headers)


def error_body(error: ApiError) -> tuple[dict[str, Any], str]:
    body = envelope(code=error.code, message=error.message, has_data=False)
    return body, body["uq"]


# Rows -> protocol objects. Each takes what the store returned and nothing else.


def render_group(row: Any) -> dict[str, Any]:
    return {
        "siteUuid": row["site_uuid"],
        "parentUuid": row["parent_uuid"],
        "deviceNumbers": row["device_count"],
        "uuid": row["uuid"],
        "profile": {"name": row["name"]},
        "created": iso(row["created"]),
        "updated": iso(row["updated"]),
        "enabled": bool(row["enabled"]),
    }


def render_device(row: Any, group: dict[str, Any] | None, now: int) -> dict[str, Any]:
    """A device; `states.state` is its presence at `now` (server.domain.presence)."""
    state = presence(
        last_checkin=row["last_checked_in"],
        interval_s=row["interval_s"],
        sleeping=bool(row["sleeping"]),
        wake_sent=row["wake_sent"],
        now=now,
    )
    return {
        "siteUuid": row["site_uuid"],
        "states": {
            "clientVersion": row["client_version"],
            "rtcEnabled": bool(row["rtc_enabled"]),
            "state": str(state),
        },
        "enrolled": iso(row["enrolled"]),
        "lastCheckedIn": iso(row["last_checked_in"]),
        "lastDisconnected": iso(row["last_disconnected"]),
        "uuid": row["uuid"],
        "profile": {
            "hardware_info": {
                "serial_no": row["serial_no"],
                "manufacturer": row["manufacturer"],
                "brand": row["brand"],
                "model": row["model"],
            }
        },
        "created": iso(row["created"]),
        "updated": iso(row["updated"]),
        "enabled": bool(row["enabled"]),
        "deviceGroup": group,
        "licenseModelUuid": row["license_model_uuid"],
        "autoRenew": None if row["auto_renew"] is None else bool(row["auto_renew"]),
        "keyFingerprint": row["key_fingerprint"],  # §7: hex SHA-256 of the bound key, or null
    }


def _file_info(row: Any) -> dict[str, Any]:
    return {
        "length": row["length"],
        "lastModified": iso(row["file_created"]),
        "fileName": row["file_name"],
        "sha256": row["sha256"],
    }


def _catalog_object(row: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The fields an App and an Ota share (§4), after their own `appInfo`/`otaInfo`."""
    return {
        **info,
        "fileUuid": row["file_uuid"],
        "fileInfo": _file_info(row),
        "userUuid": row["user_uuid"],
        "extra": json.loads(row["extra"]),
        "name": row["name"],
        "enable": bool(row["enable"]),
        "lastUpdated": iso(row["last_updated"]),
        "registeredAt": iso(row["registered_at"]),
    }


def render_app(row: Any) -> dict[str, Any]:
    return _catalog_object(row, {"appInfo": json.loads(row["app_info"])})


def render_ota(row: Any) -> dict[str, Any]:
    return _catalog_object(row, {"otaInfo": json.loads(row["ota_info"])})


def render_profile(row: Any) -> dict[str, Any]:
    doc = json.loads(row["doc"])
    return {
        "uuid": row["uuid"],
        "siteUuid": row["site_uuid"],
        "writerUuid": row["writer_uuid"],
        "writer": {"uuid": row["writer_uuid"], "email": row["writer_email"]},
        "created": row["created"],
        "updated": row["updated"],
        **doc,
    }


def render_event(row: Any) -> dict[str, Any]:
    doc = json.loads(row["doc"])
    return {
        **doc,
        "id": row["id"],
        "deviceUuid": row["device_uuid"],
        "profileUuid": row["profile_uuid"],
        "at": iso(row["at"]),
        "received": iso(row["received"]),
        "kind": row["kind"],
        "target": row["target"],
        "status": row["status"],
        "reason": row["reason"],
    }
