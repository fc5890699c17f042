"""Schemathesis against a live server: every operation of the OpenAPI document, a bounded number
of derandomized examples each (valid and invalid data), with the credentials each operation
needs. No answer may be a 5xx; every answer must be documented, the envelope, and valid against
the document; invalid data must be refused and valid data accepted (4xx that only the server's
state can explain, such as an unknown uuid, are listed per operation below).

The server runs in a thread with its own event loop (schemathesis calls with blocking
`requests`), one per module, on a fresh database. A longer run is `python -m bench.fuzz`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
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

from server.api.openapi import build_document
from server.api.operations import OPERATIONS, Operation
from server.api.validate import checks_for
from server.app import create_app
from server.config import ServerConfig
from server.errors import ApiError
from server.limits import MAX_REQUEST_LINE
from server.listener import ConnectionLimits, Listener, bind, url_of
from tests.helpers import Site, fixed_clock, seed_sites

Case = GenericCase[APIOperation[Any, Any, Any, Any]]  # what parametrize hands a test

MAX_EXAMPLES = 20  # per operation, valid and invalid: ~700 requests, well under a minute
STATEFUL_EXAMPLES = 8  # scenarios of linked calls
STATEFUL_STEPS = 6  # calls per scenario at most
SETUP_TIMEOUT_S = 60.0
DEVICE_SERIAL = "FUZZ-DEVICE-0001"

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 12,
        "generation": {
            "mode": "all",
            "deterministic": True,
            "with-security-parameters": False,
        },
        "phases": {
            "coverage": {"enabled": False},  # ~3,600 boundary cases: bench/fuzz.py runs them
            "stateful": {"inference": {"algorithms": []}},  # the document's links only
        },
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]
            }
        },
    }
)
SCHEMA = schemathesis.openapi.from_dict(build_document(), config=CONFIG)
for _uploaded in ("application/vnd.android.package-archive", "application/zip"):  # file parts
    schemathesis.serializer.alias(_uploaded, "application/octet-stream")


def _whole(value: Any) -> Any:
    """2.0 -> 2, all the way down: JSON Schema counts 2.0 as an integer, the server (as its
    parsers always did, and as the document says) wants integers written without a fraction."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


@SCHEMA.hook("map_body")
def _whole_body(context: schemathesis.HookContext, body: Any) -> Any:
    return _whole(body)


@SCHEMA.hook("map_query")
def _whole_query(context: schemathesis.HookContext, query: Any) -> Any:
    return _whole(query)


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
OPERATION_AT = {(op.method, op.path): op for op in OPERATIONS}


@dataclass
class Credentials:
    site: Site
    bearer: str
    device_token: str
    spare_bearers: list[str] = field(default_factory=list)  # logout revokes the one it is given

    def headers(self, operation: Operation) -> dict[str, str]:
        """What a well-behaved client of `operation` sends (a fresh token for each logout)."""
        key = {"X-API-Key": self.site.key}
        if operation.auth == "public":
            return {}
        if operation.auth == "key":
            return key
        if operation.auth == "device":
            return {**key, "Authorization": f"Device {self.device_token}"}
        bearer = self.spare_bearers.pop() if operation.id == "logout" else self.bearer
        return {**key, "Authorization": f"Bearer {bearer}"}


def _call(base: str, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the loopback URL of the test server
        base + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={**headers, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=SETUP_TIMEOUT_S) as response:  # noqa: S310
        answer = json.loads(response.read())
    assert answer["code"] == 0, answer
    return answer.get("data")


def _login(base: str, site: Site) -> str:
    body = {"email": site.email, "password": site.password, "type": "email"}
    return str(_call(base, "POST", "/portal/V1/auth", body, {})["access_token"])


def credentials(base: str, site: Site, spares: int) -> Credentials:
    """Log in, save one device and register it: the three kinds of credentials."""
    bearer = _login(base, site)
    device = {"profile": {"hardware_info": {"serial_no": DEVICE_SERIAL, "model": "fuzz"}}}
    admin = {"X-API-Key": site.key, "Authorization": f"Bearer {bearer}"}
    _call(base, "POST", "/ota/api/device/save", [device], admin)
    registered = _call(
        base,
        "POST",
        "/ota/api/agent/register",
        {"serialNo": DEVICE_SERIAL},
        {"X-API-Key": site.key},
    )
    return Credentials(
        site=site,
        bearer=bearer,
        device_token=str(registered["token"]),
        spare_bearers=[_login(base, site) for _ in range(spares)],
    )


class ThreadedServer:
    """The app served as `midm-server` serves it (server.listener: connection guard, aiohttp's
    own 400s as the envelope), on an event loop in a thread of its own; start/stop block."""

    def __init__(self, config: ServerConfig, parser_pool: Executor) -> None:
        self.config, self.parser_pool = config, parser_pool
        self.clock = fixed_clock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed", daemon=True)
        self.listener: Listener | None = None
        self.sites: dict[str, Site] = {}

    def _run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(SETUP_TIMEOUT_S)

    async def _start(self) -> str:
        app = create_app(self.config, clock=self.clock, parser_pool=self.parser_pool)
        sockets = bind("127.0.0.1", 0)
        self.listener = await Listener.start(app, sockets, ConnectionLimits.of(self.config))
        return url_of("127.0.0.1", sockets)

    def start(self) -> str:
        self.sites = seed_sites(self.config, self.clock, ["alpha", "beta"])
        self.thread.start()
        return str(self._run(self._start()))

    def stop(self) -> None:
        try:
            if self.listener is not None:
                self._run(self.listener.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(SETUP_TIMEOUT_S)
            self.loop.close()


@dataclass
class Live:
    base: str
    creds: Credentials


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, parser_pool: Executor) -> Iterator[Live]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    threaded = ThreadedServer(ServerConfig.for_db(folder / "midm.sqlite", port=0), parser_pool)
    base = threaded.start()
    try:
        site = threaded.sites["alpha"]
        yield Live(base, credentials(base, site, spares=4 * MAX_EXAMPLES))
    finally:
        threaded.stop()


@SCHEMA.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_every_operation_answers_as_documented(case: Case, live: Live) -> None:
    """Generated requests, valid and invalid, get documented answers and never a 5xx."""
    operation = operation_of(case)
    _own_site(case, live.creds.site)
    case.call_and_validate(base_url=live.base, headers=live.creds.headers(operation), checks=CHECKS)


def _own_site(case: Case, site: Site) -> None:
    """siteUuid/siteId name the caller's own site: another one is 40300 before anything runs."""
    if case.query:
        for key, value in (("siteUuid", site.uuid), ("siteId", site.name)):
            if key in case.query:
                case.query[key] = value


def test_linked_operations_answer_as_documented(live: Live) -> None:
    """Stateful: follow the document's links (a saved group is found, a loaded profile is edited
    as loaded, an upload is downloaded), with the same checks on every step."""

    class Workflow(SCHEMA.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Case) -> None:
            _own_site(case, live.creds.site)

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": live.base, "headers": live.creds.headers(operation_of(case))}

        def validate_response(
            self,
            response: schemathesis.Response,
            case: Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response, checks=CHECKS, headers=kwargs.get("headers"), transport_kwargs=kwargs
            )

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
    )
