"""Every path, header and JSON shape the agent uses (§7 of the protocol), in one module.

A user adapting the agent to another MiDM deployment edits this file only. Requests are plain
values; `decode()` turns a response into its `data`, or raises: ApiError (an error envelope,
with Retry-After), ProtocolError (not JSON, not the envelope, an HTML error page). Every
transport sends `encode_body()`'s bytes and reads push messages with `decode_push()`.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from agent.errors import API_ERRORS, ApiError, ProtocolError
from agent.models import (
    AppRecord,
    BuildInfo,
    DeviceFacts,
    HardwareInfo,
    PowerState,
    ProfileEvent,
)
from midm_common import wirejson

API_KEY_HEADER = "X-API-Key"
AUTHORIZATION = "Authorization"
LOGIN = "/portal/V1/auth"
EXISTS = "/ota/api/device/exists"
SAVE = "/ota/api/device/save"
CHALLENGE = "/ota/api/agent/challenge"
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
    # When the agent meant to send it (its clock's monotonic()); None: whenever it is sent.
    # The transport's observer compares it with the actual start (a late scheduler shows).
    intended: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of a frozen slotted dataclass's slots, `names` being all its fields in order:
    a value made with `cls.__new__(cls)` and these setters is the one `cls(...)` makes, without
    the frozen __init__'s object.__setattr__ per field (~3x faster: ~0.4 us against ~1.3 us for
    six fields). Only for values made once per request on a fleet's hot path, each maker
    tested equal to the constructor; TypeError when `names` are not the fields (one was added:
    its maker must set it too). No __post_init__ runs: only for classes that have none."""
    fields = tuple(f.name for f in dataclasses.fields(cls))
    if names != fields or "__post_init__" in vars(cls):
        raise TypeError(f"{cls.__name__}: the fields are {fields}, not {names}")
    return tuple(vars(cls)[name].__set__ for name in names)


_set_status, _set_body, _set_headers = slot_setters(Response, "status", "body", "headers")


def response(status: int, body: bytes, headers: Mapping[str, str]) -> Response:
    """`Response(status=status, body=body, headers=headers)`, faster (a transport's per-answer
    value: see slot_setters)."""
    value = Response.__new__(Response)
    _set_status(value, status)
    _set_body(value, body)
    _set_headers(value, headers)
    return value


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


def challenge(creds: Credentials, serial: str) -> Request:
    """A challenge for the device's key to sign (§7 device keys; API key only)."""
    return Request(
        method="POST",
        path=CHALLENGE,
        name="challenge",
        headers=key_headers(creds),
        body={"serialNo": serial},
    )


def register(
    creds: Credentials,
    serial: str,
    hardware: Mapping[str, str],
    *,
    public_key: str | None = None,
    proof: tuple[str, bytes] | None = None,
) -> Request:
    """`public_key`: the device's SubjectPublicKeyInfo PEM; `proof`: (challenge, signature over
    its UTF-8 bytes), sent as `challenge` and base64 `signature`."""
    body: dict[str, Any] = {"serialNo": serial, "hardware_info": dict(hardware)}
    if public_key is not None:
        body["publicKey"] = public_key
    if proof is not None:
        body["challenge"] = proof[0]
        body["signature"] = base64.b64encode(proof[1]).decode("ascii")
    return Request(
        method="POST", path=REGISTER, name="register", headers=key_headers(creds), body=body
    )


_REQUEST_SETTERS: Final = slot_setters(
    Request, "method", "path", "body", "params", "headers", "name", "intended"
)


def checkin(
    creds: Credentials, body: Mapping[str, Any], *, intended: float | None = None
) -> Request:
    """A check-in; `intended` is when the agent's schedule meant it to go (on its clock).
    Made as `Request(method="POST", path=CHECKIN, name="checkin", ...)` would be, faster (one
    a check-in: see slot_setters)."""
    value = Request.__new__(Request)
    method, path, body_, params, headers, name, intended_ = _REQUEST_SETTERS
    method(value, "POST")
    path(value, CHECKIN)
    body_(value, dict(body))
    params(value, {})
    headers(value, device_headers(creds))
    name(value, "checkin")
    intended_(value, intended)
    return value


def put_apps(creds: Credentials, report: Mapping[str, Any]) -> Request:
    """Send an inventory report made by `inventory_report` (as the outbox kept it)."""
    return Request(
        method="PUT", path=APPS, name="apps", headers=device_headers(creds), body=dict(report)
    )


def profiles(creds: Credentials) -> Request:
    return Request(method="GET", path=PROFILES, name="profiles", headers=device_headers(creds))


def events(creds: Credentials, batch: list[dict[str, Any]]) -> Request:
    return Request(
        method="POST", path=EVENTS, name="events", headers=device_headers(creds), body=batch
    )


def ota_next(creds: Credentials, profile: str) -> Request:
    return Request(
        method="GET",
        path=OTA_NEXT,
        name="ota_next",
        params={"profileUuid": profile},
        headers=device_headers(creds),
    )


CONTENT_TYPE = "Content-Type"
JSON_TYPE = "application/json"


def encode_body(request: Request) -> bytes | None:
    """The bytes every transport sends for the request's body (compact JSON, UTF-8:
    midm_common.wirejson), or None."""
    if request.body is None:
        return None
    return wirejson.dumps(request.body)


def wire_headers(request: Request, body: bytes | None) -> dict[str, str]:
    """The request's headers as sent: with the JSON Content-Type when there is a body."""
    headers = dict(request.headers)
    if body is not None:
        headers[CONTENT_TYPE] = JSON_TYPE
    return headers


def decode_push(data: str | bytes) -> dict[str, Any] | None:
    """A push message (a JSON object such as {"type": "sync"}); None for anything else, which
    the agent ignores."""
    try:
        value = wirejson.loads(data)
    except wirejson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


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
        envelope = wirejson.loads(response.body)
    except wirejson.JSONDecodeError as exc:
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
    inventory_wanted: bool
    profiles: tuple[ProfileRef, ...]


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"{what}: unexpected value {value!r} in the server's answer")
    return value


# The last check-in reply parsed, under its key (the validated values, immutable): a fleet's
# devices get the same answer over and over, so the frozen values are made once for them all.
_last_reply: tuple[tuple[float, bool, tuple[tuple[str, int], ...]], CheckinReply] | None = None


def parse_checkin_reply(data: Any) -> CheckinReply:
    """The check-in's answer; ProtocolError for a value of the wrong type (a bool or a float is
    not an `updated`, a bool is not `nextCheckinSeconds`).

    Every value is checked each time, then the reply is looked up by those values (a tuple of
    plain values, never the caller's dicts, which it could change): equal to the previous
    reply's, that CheckinReply (immutable, so shared safely) is returned instead of a new one
    and its ProfileRefs: one key comparison instead of 1 + len(profiles) frozen values."""
    global _last_reply  # a one-entry memo of immutable values
    if type(data) is not dict:
        _expect(data, dict, "checkin")
    raw = data.get("profiles", [])
    if type(raw) is not list:
        _expect(raw, list, "checkin.profiles")
    pairs = []
    for item in raw:
        if type(item) is not dict:
            _expect(item, dict, "checkin.profiles[]")
        uuid, updated = item.get("uuid"), item.get("updated")
        if type(uuid) is not str:
            _expect(uuid, str, "profiles[].uuid")
        if type(updated) is not int:
            _expect(updated, int, "profiles[].updated")
        pairs.append((uuid, updated))
    seconds = data.get("nextCheckinSeconds")
    if type(seconds) is not int and type(seconds) is not float:
        _expect(seconds, (int, float), "nextCheckinSeconds")
    key = (float(seconds), bool(data.get("inventoryWanted", False)), tuple(pairs))
    last = _last_reply
    if last is not None and last[0] == key:
        return last[1]
    reply = CheckinReply(
        next_checkin_s=key[0],
        inventory_wanted=key[1],
        profiles=tuple(ProfileRef(uuid=uuid, updated=updated) for uuid, updated in key[2]),
    )
    _last_reply = (key, reply)
    return reply


class KeyProof(StrEnum):
    """How a registration used the device's key (agent.core.enrollment)."""

    NONE = "none"  # the agent holds no key
    OFFERED = "offered"  # publicKey sent without a proof (a key no server could hold yet)
    SIGNED = "signed"  # publicKey and a signed challenge
    UNSUPPORTED = "unsupported"  # the server has no agent/challenge (404): no proof sent


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    device_uuid: str
    token: str
    key_proof: KeyProof = KeyProof.NONE  # not on the wire: what the enrollment flow did


def parse_registration(data: Any) -> Registration:
    _expect(data, dict, "register")
    return Registration(
        device_uuid=_expect(data.get("deviceUuid"), str, "deviceUuid"),
        token=_expect(data.get("token"), str, "token"),
    )


def parse_challenge(data: Any) -> str:
    """The challenge of agent/challenge's answer (its `expiresIn` is the server's business)."""
    _expect(data, dict, "challenge")
    text: str = _expect(data.get("challenge"), str, "challenge")
    return text


def parse_login(data: Any) -> str:
    _expect(data, dict, "login")
    return str(_expect(data.get("access_token"), str, "access_token"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileDoc:
    """One profile assigned to the device (`GET agent/profiles`); `doc` is read by the planner."""

    uuid: str
    updated: int
    doc: Mapping[str, Any]


def parse_profiles(data: Any) -> list[ProfileDoc]:
    """The profile documents in the server's order; items without a uuid are ignored."""
    found = []
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and isinstance(item.get("uuid"), str):
            found.append(
                ProfileDoc(uuid=item["uuid"], updated=int(item.get("updated") or 0), doc=item)
            )
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class OtaOffer:
    """The answer of `ota/next`: the image to install (its fileUuid and otaInfo.abUpdate), or
    none and the feed's reason (`not_before`, `up_to_date`, ...)."""

    file_uuid: str | None
    ab_update: bool = False
    reason: str = ""


def parse_ota_offer(data: Any) -> OtaOffer:
    if not isinstance(data, dict):
        return OtaOffer(file_uuid=None)
    reason = str(data.get("reason", ""))
    image = data.get("ota")
    if image is None:
        return OtaOffer(file_uuid=None, reason=reason)
    _expect(image, dict, "ota_next.ota")
    info = image.get("otaInfo") or {}
    return OtaOffer(
        file_uuid=str(_expect(image.get("fileUuid"), str, "ota.fileUuid")),
        ab_update=bool(info.get("abUpdate")) if isinstance(info, dict) else False,
        reason=reason,
    )


# -- files (`/ota/api/file/{fileUuid}`) -------------------------------------------------------

FILE = "/ota/api/file/{}"
CHECKSUM_HEADER = "X-Checksum-SHA256"
ETAG_HEADER = "ETag"
IF_RANGE_HEADER = "If-Range"
RANGE_HEADER = "Range"


def file_path(file_uuid: str) -> str:
    return FILE.format(file_uuid)


def download_headers(creds: Credentials, *, if_range: str | None = None) -> dict[str, str]:
    """A device's file download; `if_range` (the ETag seen before) resumes only that file."""
    headers = device_headers(creds)
    if if_range:
        headers[IF_RANGE_HEADER] = if_range
    return headers


def resume_from(headers: Mapping[str, str], offset: int) -> dict[str, str]:
    """`headers`, asking for the bytes from `offset` on when it is > 0 (the rest of a file)."""
    ranged = dict(headers)
    if offset > 0:
        ranged[RANGE_HEADER] = f"bytes={offset}-"
    return ranged


def expected_sha256(headers: Mapping[str, str]) -> str:
    """The sha256 the server gives for a file (its checksum header, else its ETag), or ""."""
    return headers.get(CHECKSUM_HEADER) or (headers.get(ETAG_HEADER) or "").strip('"')


# -- the agent's values <-> JSON (the field names of §7) ----------------------------------------

HARDWARE_SECTION = "hardware_info"
BUILD_SECTION = "build"
# attribute of the dataclass -> JSON field name
HARDWARE_FIELDS: Final = {
    "serial_no": "serial_no",
    "manufacturer": "manufacturer",
    "brand": "brand",
    "model": "model",
}
BUILD_FIELDS: Final = {
    "fingerprint": "fingerprint",
    "build_date": "buildDate",
    "display_id": "displayId",
    "sdk": "sdk",
    "device_id": "deviceId",
    "product_id": "productId",
    "sku_id": "skuId",
    "customer_id": "customerId",
    "ab_update": "abUpdate",
    "slot": "slot",
    "region": "region",
}
APP_FIELDS: Final = {
    "package_name": "packageName",
    "label": "label",
    "version_code": "versionCode",
    "version_name": "versionName",
    "min_sdk_version": "minSdkVersion",
    "target_sdk_version": "targetSdkVersion",
    "max_sdk_version": "maxSdkVersion",
    "cert_md5": "certMd5",
    "app_size": "appSize",
    "data_size": "dataSize",
    "first_installed": "firstInstalled",
    "last_updated": "lastUpdated",
}
_HARDWARE_ATTRIBUTES: Final = {wire: attribute for attribute, wire in HARDWARE_FIELDS.items()}
_BUILD_ATTRIBUTES: Final = {wire: attribute for attribute, wire in BUILD_FIELDS.items()}
_APP_ATTRIBUTES: Final = {wire: attribute for attribute, wire in APP_FIELDS.items()}
CLIENT_VERSION = 1  # states.clientVersion: bump when the agent's protocol behaviour changes


def _to_wire(value: object, names: Mapping[str, str]) -> dict[str, Any]:
    return {wire: getattr(value, attribute) for attribute, wire in names.items()}


def hardware_to_wire(hardware: HardwareInfo) -> dict[str, str]:
    return _to_wire(hardware, HARDWARE_FIELDS)


def build_to_wire(build: BuildInfo) -> dict[str, Any]:
    return _to_wire(build, BUILD_FIELDS)


def power_to_wire(power: PowerState) -> dict[str, Any]:
    return {"ac": power.ac, "battery": power.battery}


def app_to_wire(app: AppRecord) -> dict[str, Any]:
    return _to_wire(app, APP_FIELDS)


def app_from_wire(values: Mapping[str, Any]) -> AppRecord:
    """An AppInfo as a record; fields it lacks keep their defaults, unknown ones are ignored."""
    return AppRecord(**{_APP_ATTRIBUTES[k]: v for k, v in values.items() if k in _APP_ATTRIBUTES})


def facts_to_wire(facts: DeviceFacts) -> dict[str, Any]:
    """The device's facts as `midm-agent facts` prints them (and `--facts` reads the first two)."""
    return {
        HARDWARE_SECTION: hardware_to_wire(facts.hardware),
        BUILD_SECTION: build_to_wire(facts.build),
        "power": power_to_wire(facts.power),
        "network": facts.network,
        "sleeping": facts.sleeping,
    }


def hardware_from_wire(values: Mapping[str, Any]) -> dict[str, str]:
    """`hardware_info` fields as HardwareInfo attributes (strings); KeyError on an unknown one."""
    return {_HARDWARE_ATTRIBUTES[k]: str(v) for k, v in values.items()}


def build_from_wire(
    values: Mapping[str, Any], keep: Callable[[str], bool] = lambda attribute: True
) -> dict[str, Any]:
    """`build` fields as BuildInfo attributes of the right type, those `keep(attribute)` wants;
    KeyError on an unknown field."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        attribute = _BUILD_ATTRIBUTES[key]
        if not keep(attribute):
            continue
        if attribute == "build_date":
            changes[attribute] = None if value is None else int(value)
        elif attribute == "ab_update":
            changes[attribute] = bool(value)
        else:
            changes[attribute] = str(value)
    return changes


def checkin_body(
    *,
    build: BuildInfo,
    power: PowerState,
    network: str,
    sleeping: bool,
    rtc_enabled: bool,
    inventory_hash: str | None,
) -> dict[str, Any]:
    """The check-in's body (§7) from the device's facts (its hardware goes with the register,
    not here)."""
    body: dict[str, Any] = {
        "states": {
            "clientVersion": CLIENT_VERSION,
            "rtcEnabled": rtc_enabled,
            "state": "sleeping" if sleeping else "online",
        },
        "activity": "sleeping" if sleeping else "active",
        "power": power_to_wire(power),
        "network": network,
        "build": _build_on_wire(build),
    }
    if inventory_hash is not None:
        body["inventoryHash"] = inventory_hash
    return body


_BUILDS_ON_WIRE: dict[BuildInfo, dict[str, Any]] = {}  # a fleet has a few builds
BUILDS_KEPT = 64


def _build_on_wire(build: BuildInfo) -> dict[str, Any]:
    """`build_to_wire(build)`, a copy of the one made for an equal build (every check-in
    carries it: a copy is a third of the cost of making it); at most BUILDS_KEPT are kept."""
    wire = _BUILDS_ON_WIRE.get(build)
    if wire is None:
        if len(_BUILDS_ON_WIRE) >= BUILDS_KEPT:
            _BUILDS_ON_WIRE.clear()
        wire = _BUILDS_ON_WIRE[build] = build_to_wire(build)
    return dict(wire)


def inventory_report(apps: Iterable[AppRecord], inventory_hash: str) -> dict[str, Any]:
    """The body of `PUT agent/apps` for the whole inventory (kept in the outbox as it is)."""
    return {
        "category": "all",
        "apps": [app_to_wire(a) for a in apps],
        "inventoryHash": inventory_hash,
    }


def inventory_hash_of(report: Mapping[str, Any]) -> str:
    """The hash an inventory report (from `inventory_report`) carries."""
    return str(report["inventoryHash"])


def event_to_wire(event: ProfileEvent) -> dict[str, Any]:
    """A profile event as `POST agent/events` takes it (the agent adds `id` and `at`)."""
    body: dict[str, Any] = {
        "profileUuid": event.profile,
        "kind": str(event.kind),
        "target": event.target,
        "status": str(event.status),
        "reason": str(event.reason),
    }
    if event.version_code is not None:
        body["versionCode"] = event.version_code
    if event.build is not None:
        body["build"] = event.build
    return body
