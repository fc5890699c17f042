"""Schemathesis against a live server: every operation of the OpenAPI document, a bounded number
of derandomized examples each (valid and invalid data), with the credentials each operation
needs. No answer may be a 5xx; every answer must be documented, the envelope, and valid against
the document; invalid data must be refused and valid data accepted (4xx that only the server's
state can explain, such as an unknown uuid, are listed per operation: tests/server/fuzzing.py).

The server runs in a thread with its own event loop (schemathesis calls with blocking
`requests`), one per module, on a fresh database. A longer run is `python -m bench.fuzz`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from server.api.openapi import build_document
from server.app import create_app
from server.config import ServerConfig
from server.listener import ConnectionLimits, Listener, bind, url_of
from tests.helpers import Site, fixed_clock, seed_sites
from tests.server import fuzzing
from tests.server.fuzzing import CHECKS, Case, Credentials, credentials, operation_of

MAX_EXAMPLES = 20  # per operation, valid and invalid: ~700 requests, well under a minute
STATEFUL_EXAMPLES = 8  # scenarios of linked calls
STATEFUL_STEPS = 6  # calls per scenario at most
SETUP_TIMEOUT_S = 60.0

SCHEMA = schemathesis.openapi.from_dict(
    build_document(),
    config=fuzzing.config(seed=12, coverage=False),  # bench/fuzz.py: coverage
)
fuzzing.send_files_as_bytes()


@SCHEMA.hook("map_body")
def _whole_body(context: schemathesis.HookContext, body: Any) -> Any:
    return fuzzing.whole(body)


@SCHEMA.hook("map_query")
def _whole_query(context: schemathesis.HookContext, query: Any) -> Any:
    return fuzzing.whole(query)


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
        creds = credentials(
            base,
            key=site.key,
            site_name=site.name,
            email=site.email,
            password=site.password,
            spares=4 * MAX_EXAMPLES,
        )
        yield Live(base, creds)
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
    live.creds.own_site(case)
    case.call_and_validate(base_url=live.base, headers=live.creds.headers(operation), checks=CHECKS)


def test_linked_operations_answer_as_documented(live: Live) -> None:
    """Stateful: follow the document's links (a saved group is found, a loaded profile is edited
    as loaded, an upload is downloaded), with the same checks on every step."""

    class Workflow(SCHEMA.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Case) -> None:
            live.creds.own_site(case)

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
