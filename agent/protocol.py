"""Every path, header and JSON shape the agent uses (§7 of the protocol), in one module.

A user adapting the agent to another MiDM deployment edits this file only. Requests are plain
values; `decode()` turns a response into its `data`, or raises: ApiError (an error envelope,
with Retry-After), ProtocolError (not JSON, not the envelope, an HTML error page).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import API_ERRORS, ApiError, ProtocolError

API_KEY_HEADER = "X-API-Key"
AUTHORIZATION = "Authorization"
LOGIN = "/portal/V1/auth"
EXISTS = "/ota/api/device/exists"
SAVE = "/ota/api/device/save"
REGISTER = "/ota/api/agent/register"
CHECKIN = "/ota/api/agent/checkin"
APPS = "/ota/api/agent/apps"
PROFILES = "/ota/api/agent/profiles"
OTA_NEXT = "/ota/api/agent/ota/next"
EVENTS = "/ota/api/agent/events"
PUSH = "/ota/api/agent/ws"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    api_key: str
    admin_token: str | None = None
    device_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str
    body: Any = None
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    name: str = ""  # for logs and statistics: "checkin", "register", ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def key_headers(creds: Credentials) -> dict[str, str]:
    return {API_KEY_HEADER: creds.api_key}


def admin_headers(creds: Credentials) -> dict[str, str]:
    return {API_KEY_HEADER: creds.api_key, AUTHORIZATION: f"Bearer {creds.admin_token}"}


def device_headers(creds: Credentials) -> dict[str, str]:
    return {API_KEY_HEADER: creds.api_key, AUTHORIZATION: f"Device {creds.device_token}"}


def login(creds: Credentials, email: str, password: str) -> Request:
    return Request(
        method="POST",
        path=LOGIN,
        name="login",
        headers=key_headers(creds),
        body={"email": email, "password": password, "type": "email"},
    )


def exists(creds: Credentials, serial: str) -> Request:
    return Request(
        method="GET",
        path=EXISTS,
        name="exists",
        params={"serialNo": serial},
        headers=admin_headers(creds),
    )


def save_device(creds: Credentials, hardware: Mapping[str, str]) -> Request:
    return Request(
        method="POST",
        path=SAVE,
        name="save",
        headers=admin_headers(creds),
        body=[{"profile": {"hardware_info": dict(hardware)}, "enabled": True}],
    )


def register(creds: Credentials, serial: str, hardware: Mapping[str, str]) -> Request:
    return Request(
        method="POST",
        path=REGISTER,
        name="register",
        headers=key_headers(creds),
        body={"serialNo": serial, "hardware_info": dict(hardware)},
    )


def checkin(creds: Credentials, body: Mapping[str, Any]) -> Request:
    return Request(
        method="POST", path=CHECKIN, name="checkin", headers=device_headers(creds), body=dict(body)
    )


def put_apps(
    creds: Credentials, category: str, apps: list[dict[str, Any]], inventory_hash: str
) -> Request:
    return Request(
        method="PUT",
        path=APPS,
        name="apps",
        headers=device_headers(creds),
        body={"category": category, "apps": apps, "inventoryHash": inventory_hash},
    )


def profiles(creds: Credentials) -> Request:
    return Request(method="GET", path=PROFILES, name="profiles", headers=device_headers(creds))


def events(creds: Credentials, batch: list[dict[str, Any]]) -> Request:
    return Request(
        method="POST", path=EVENTS, name="events", headers=device_headers(creds), body=batch
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def decode(response: Response, what: str) -> Any:
    """The `data` of a success envelope; raise ApiError or ProtocolError otherwise."""
    try:
        envelope = json.loads(response.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        snippet = response.body[:80].decode("utf-8", "replace").strip()
        kind = "an HTML page" if snippet.lower().startswith(("<!doctype", "<html")) else "not JSON"
        raise ProtocolError(
            f"{what}: the server answered HTTP {response.status} with {kind}: {snippet!r}"
        ) from exc
    if (
        not isinstance(envelope, dict)
        or not isinstance(envelope.get("result"), bool)
        or not isinstance(envelope.get("code"), int)
    ):
        raise ProtocolError(f"{what}: HTTP {response.status} answer is not the MiDM envelope")
    if envelope["result"] and response.status < 400:
        return envelope.get("data")
    code = envelope["code"]
    error = API_ERRORS.get(code, ApiError)
    raise error(
        f"{what}: {envelope.get('message') or 'refused'} (code {code}, HTTP {response.status})",
        code=code,
        status=response.status,
        uq=str(envelope.get("uq", "")),
        retry_after=_retry_after(response.headers),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileRef:
    uuid: str
    updated: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinReply:
    next_checkin_s: float
    server_time: str
    inventory_wanted: bool
    profiles: tuple[ProfileRef, ...]


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"{what}: unexpected value {value!r} in the server's answer")
    return value


def parse_checkin_reply(data: Any) -> CheckinReply:
    _expect(data, dict, "checkin")
    refs = []
    for item in _expect(data.get("profiles", []), list, "checkin.profiles"):
        _expect(item, dict, "checkin.profiles[]")
        refs.append(
            ProfileRef(
                uuid=_expect(item.get("uuid"), str, "profiles[].uuid"),
                updated=_expect(item.get("updated"), int, "profiles[].updated"),
            )
        )
    return CheckinReply(
        next_checkin_s=float(
            _expect(data.get("nextCheckinSeconds"), (int, float), "nextCheckinSeconds")
        ),
        server_time=str(data.get("serverTime", "")),
        inventory_wanted=bool(data.get("inventoryWanted", False)),
        profiles=tuple(refs),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    device_uuid: str
    token: str


def parse_registration(data: Any) -> Registration:
    _expect(data, dict, "register")
    return Registration(
        device_uuid=_expect(data.get("deviceUuid"), str, "deviceUuid"),
        token=_expect(data.get("token"), str, "token"),
    )


def parse_login(data: Any) -> str:
    _expect(data, dict, "login")
    return str(_expect(data.get("access_token"), str, "access_token"))
