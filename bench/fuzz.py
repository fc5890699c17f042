"""The long fuzz run: schemathesis's engine against `midm-server` in its own process, loading
the document the server serves (GET /ota/api/openapi.json), every phase: examples, coverage
(boundary values of every parameter and field, unexpected methods), fuzzing (valid and invalid
data) and stateful (the document's links), with the checks of tests/server/fuzzing.py.

    python -m bench.fuzz [--max-examples 100] [--seed 1] [--max-time 900] [--only checkin]

Prints JSON: operations, examples (requests sent), responses by status class, the 5xx count
(target 0), failures by kind (check name -> failing cases) and per operation, one sample
message per kind, and the wall time. Loopback only; the run is bounded by --max-examples per
operation and phase, and by --max-time.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.engine import Status, events, from_schema

from bench.common import API_KEY, EMAIL, PASSWORD, emit, server_process
from tests.server import fuzzing

SITE_NAME = "default"  # the first site of a new database when MIDM_SITE is unset


def _hooks(creds: fuzzing.Credentials) -> None:
    """Credentials (as explicit auth: ignored_auth then probes without them) and the caller's
    own site on every request; whole numbers sent as ints."""

    @schemathesis.auth(refresh_interval=None)
    class PerOperation:
        def get(self, case: fuzzing.Case, ctx: schemathesis.AuthContext) -> fuzzing.Credentials:
            return creds

        def set(
            self, case: fuzzing.Case, data: fuzzing.Credentials, ctx: schemathesis.AuthContext
        ) -> None:
            data.own_site(case)
            case.headers.update(data.headers(fuzzing.operation_of(case)))

    @schemathesis.hook("map_body")
    def whole_body(context: schemathesis.HookContext, body: Any) -> Any:
        return fuzzing.whole(body)

    @schemathesis.hook("map_query")
    def whole_query(context: schemathesis.HookContext, query: Any) -> Any:
        return fuzzing.whole(query)


def run(
    base: str, *, seed: int, max_examples: int, max_time: int, only: list[str]
) -> dict[str, Any]:
    """The engine's run against `base`, summarised."""
    creds = fuzzing.credentials(
        base, key=API_KEY, site_name=SITE_NAME, email=EMAIL, password=PASSWORD, spares=2_000
    )
    _hooks(creds)
    fuzzing.send_files_as_bytes()
    schemathesis.check(fuzzing.valid_data_accepted)
    schemathesis.check(fuzzing.shapes_agree)
    config = fuzzing.config(
        seed=seed, coverage=True, max_examples=max_examples, base_url=base, max_time=max_time
    )
    schema: schemathesis.BaseSchema = schemathesis.openapi.from_url(
        f"{base}/ota/api/openapi.json", config=config
    )
    if only:
        schema = schema.include(operation_id=only)
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    failing_operations: Counter[str] = Counter()
    samples: dict[str, str] = {}
    requests = server_errors = 0
    operations: set[str] = set()
    started = time.perf_counter()
    finished: events.EngineFinished | None = None
    checked: Counter[str] = Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                requests += 1
                operations.add(recorder.label)
                if interaction.response is not None:
                    status = interaction.response.status_code
                    statuses[f"{status // 100}xx"] += 1
                    server_errors += status >= 500
            for checks in recorder.checks.values():
                for check in checks:
                    checked[check.name] += 1
                    if check.status == Status.FAILURE:
                        failures[check.name] += 1
                        failing_operations[recorder.label] += 1
                        if check.name not in samples and check.failure_info is not None:
                            failure = check.failure_info.failure
                            samples[check.name] = (
                                f"{recorder.label}: {failure.title}: {failure.message[:300]} "
                                f"| {check.failure_info.code_sample[:700]}"
                            )
        elif isinstance(event, events.EngineFinished):
            finished = event
    return {
        "operations": len(operations),
        "examples": requests,
        "responses": dict(sorted(statuses.items())),
        "server_errors_5xx": server_errors,
        "failures_by_kind": dict(failures.most_common()),
        "failing_operations": dict(failing_operations.most_common()),
        "samples": samples,
        "checks_run": dict(sorted(checked.items())),
        "stop_reason": str(finished.stop_reason) if finished is not None else "unknown",
        "seed": seed,
        "max_examples": max_examples,
        "wall_s": round(time.perf_counter() - started, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-time", type=int, default=900, help="seconds, then stop")
    parser.add_argument("--only", action="append", default=[], help="an operationId (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        async with server_process(Path(folder) / "midm.sqlite") as base:
            report = await asyncio.to_thread(
                run,
                base,
                seed=args.seed,
                max_examples=args.max_examples,
                max_time=args.max_time,
                only=args.only,
            )
    emit(report)


if __name__ == "__main__":
    asyncio.run(main())
