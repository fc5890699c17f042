"""Schemathesis glue shared by tests/server/test_fuzz.py (bounded) and bench/fuzz.py (longer):
the configuration, the credentials each operation needs, and the checks beyond the built-ins.

- Every generated request carries what a well-behaved client of its operation sends (site key,
  admin bearer or device token; a fresh bearer for each logout); valid data names its own site.
- `whole`: JSON Schema counts 2.0 as an integer, the server (as its parsers always did, and as
  the document says) wants 2; generated bodies and queries are sent with whole numbers as ints.
- `valid_data_accepted`: schema-valid data is accepted, or refused with 40001 only by the
  operations in SEMANTIC (a reason no schema can say: a uuid that must exist), or with 40000
  when the query does not fit the request line (a transport limit the document states).
- `shapes_agree`: what the document calls valid passes server.api's checks, as sent.
No pytest here: bench/fuzz.py imports it.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis import APIOperation
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case as GenericCase
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.api.operations import OPERATIONS, Operation
from server.api.validate import checks_for
from server.errors import ApiError
from server.limits import MAX_REQUEST_LINE

Case = GenericCase[APIOperation[Any, Any, Any, Any]]  # what schemathesis hands a test

SETUP_TIMEOUT_S = 60.0
DEVICE_SERIAL = "FUZZ-DEVICE-0001"
REFUSED = [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]  # invalid data: one of these


def config(
    *,
    seed: int,
    coverage: bool,
    max_examples: int | None = None,
    base_url: str | None = None,
    max_time: int | None = None,
) -> schemathesis.Config:
    """Valid and invalid data, deterministic; stateful runs follow the document's links only;
    valid data is judged by valid_data_accepted (positive_data_acceptance knows no SEMANTIC)."""
    generation: dict[str, Any] = {
        "mode": "all",
        "deterministic": True,
        "with-security-parameters": False,
    }
    if max_examples is not None:
        generation["max-examples"] = max_examples
    found: dict[str, Any] = {
        "seed": seed,
        "generation": generation,
        "phases": {
            "coverage": {"enabled": coverage},
            "stateful": {"inference": {"algorithms": []}},
        },
        "checks": {
            "negative_data_rejection": {"expected-statuses": REFUSED},
            "positive_data_acceptance": {"enabled": False},
        },
    }
    if base_url is not None:
        found["base-url"] = base_url
    if max_time is not None:
        found["max-time"] = max_time
    return schemathesis.Config.from_dict(found)


def send_files_as_bytes() -> None:
    """Upload parts are bytes whatever their declared media type."""
    for media_type in ("application/vnd.android.package-archive", "application/zip"):
        schemathesis.serializer.alias(media_type, "application/octet-stream")


def whole(value: Any) -> Any:
    """2.0 -> 2, all the way down (see the module doc)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [whole(item) for item in value]
    if isinstance(value, dict):
        return {key: whole(item) for key, item in value.items()}
    return value


# Operations whose parsers refuse some schema-valid requests with 40001 for a reason a schema
# cannot say: the answer to a valid shape may be that 40001, never 40000 and never a 5xx.
SEMANTIC = {
    "saveGroup": "parentUuid must name a group of the site; no cycles",
    "saveDevices": "groupUuid must name a group; a serial listed twice",
    "findDevice": "one of deviceUuid, uuid, serialNo",
    "installedApps": "one of deviceUuid, uuid, serialNo",
    "appStatus": "one of deviceUuid, uuid, serialNo",
    "findDevices": "filter times must parse as ISO-8601 within 1970..9999",
    "findLogs": "filter times must parse",
    "uploadApp": "the file must be a signed APK",
    "uploadOta": "the file must be an OTA zip; otaInfo must give deviceId and postBuild",
    "saveProfile": "apps, otas and groups named must exist; times must parse; no duplicates",
    "editProfile": "as saveProfile; the body's uuid must be the query's",
    "register": "publicKey must be an Ed25519 or P-256 SPKI PEM; signature base64 of 8..72 "
    "bytes; challenge and signature together (§7 device keys)",
    "putApps": "a package listed twice",
    "postEvents": "ids must be uuids; times must parse; events name covering profiles",
    "pushChannel": "a plain GET is not a WebSocket upgrade (40000)",
}
ACCEPTED = {*range(200, 300), 401, 403, 404, 409, 422, 429}
OPERATION_AT = {(op.method, op.path): op for op in OPERATIONS}


def operation_of(case: Case) -> Operation:
    return OPERATION_AT[(case.operation.method.upper(), case.operation.path)]


def _positive(case: Case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


def valid_data_accepted(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> None:
    """Schema-valid data is accepted, or refused only for the reasons SEMANTIC lists."""
    if not _positive(case) or response.status_code in ACCEPTED:
        return
    operation = operation_of(case)
    answer = json.loads(response.content)
    url = urllib.parse.urlsplit(response.request.url or "")
    line = f"{case.method} {url.path}?{url.query} HTTP/1.1".encode()
    if (response.status_code, answer["code"]) == (400, 40000) and len(line) > MAX_REQUEST_LINE:
        return  # a query the request line cannot hold (the document says how long it may be)
    if response.status_code == 400 and operation.id in SEMANTIC:
        allowed = 40000 if operation.websocket else 40001
        assert answer["code"] == allowed, (operation.id, answer)
        return
    raise AssertionError(f"schema-valid request refused: {response.status_code} {answer}")


def shapes_agree(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> None:
    """What the document calls valid passes the server's structural checks (server.api), as sent."""
    if not _positive(case):
        return
    operation = operation_of(case)
    checks = checks_for(operation.method, operation.path)
    assert checks is not None
    url = urllib.parse.urlsplit(response.request.url or "")
    query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
    path = {k: str(v) for k, v in (case.path_parameters or {}).items()}
    try:
        checks.check_params(query, path)
        if operation.body is not None:
            checks.check_body(case.body)
    except ApiError as refused:
        raise AssertionError(f"schema-valid, refused by server.api: {refused.message}") from None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    valid_data_accepted,
    shapes_agree,
]


@dataclass
class Credentials:
    key: str
    site_uuid: str
    site_name: str
    bearer: str
    device_token: str
    spare_bearers: list[str] = field(default_factory=list)  # logout revokes the one it is given

    def headers(self, operation: Operation) -> dict[str, str]:
        """What a well-behaved client of `operation` sends (a fresh token for each logout)."""
        key = {"X-API-Key": self.key}
        if operation.auth == "public":
            return {}
        if operation.auth == "key":
            return key
        if operation.auth == "device":
            return {**key, "Authorization": f"Device {self.device_token}"}
        bearer = self.spare_bearers.pop() if operation.id == "logout" else self.bearer
        return {**key, "Authorization": f"Bearer {bearer}"}

    def own_site(self, case: Case) -> None:
        """siteUuid/siteId of valid data name the caller's own site (another is 40300 before
        anything runs); invalid data is left as generated (its mutation may be these two)."""
        if case.query and _positive(case):
            for name, value in (("siteUuid", self.site_uuid), ("siteId", self.site_name)):
                if name in case.query:
                    case.query[name] = value


def _call(base: str, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the loopback URL of a server we started
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={**headers, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=SETUP_TIMEOUT_S) as response:  # noqa: S310
        answer = json.loads(response.read())
    assert answer["code"] == 0, answer
    return answer.get("data")


def _login(base: str, email: str, password: str) -> str:
    body = {"email": email, "password": password, "type": "email"}
    return str(_call(base, "POST", "/portal/V1/auth", body, {})["access_token"])


def credentials(
    base: str, *, key: str, site_name: str, email: str, password: str, spares: int
) -> Credentials:
    """Log in, save one device and register it: the three kinds of credentials."""
    bearer = _login(base, email, password)
    admin = {"X-API-Key": key, "Authorization": f"Bearer {bearer}"}
    site_uuid = str(_call(base, "GET", "/portal/V1/auth/token-verify", None, admin)["siteUuid"])
    device = {"profile": {"hardware_info": {"serial_no": DEVICE_SERIAL, "model": "fuzz"}}}
    _call(base, "POST", "/ota/api/device/save", [device], admin)
    registered = _call(
        base, "POST", "/ota/api/agent/register", {"serialNo": DEVICE_SERIAL}, {"X-API-Key": key}
    )
    return Credentials(
        key=key,
        site_uuid=site_uuid,
        site_name=site_name,
        bearer=bearer,
        device_token=str(registered["token"]),
        spare_bearers=[_login(base, email, password) for _ in range(spares)],
    )
