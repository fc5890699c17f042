"""One conformance check for every Transport (aiohttp over loopback, MockTransport), and TLS
options that cannot work are refused clearly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.errors import ConfigError
from agent.protocol import Request, Response
from agent.transport.base import Transport
from agent.transport.client import AiohttpTransport, TlsOptions
from agent.transport.mock import MockTransport


async def echo_logic(method: str, path: str, body: bytes, query: dict[str, str]) -> Response:
    payload = {
        "method": method,
        "path": path,
        "body": json.loads(body) if body else None,
        "query": query,
    }
    return Response(status=201, body=json.dumps(payload).encode(), headers={"X-Echo": "1"})


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        answer = await echo_logic(
            request.method, request.path, await request.read(), dict(request.query)
        )
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def conformance(transport: Transport) -> None:
    request = Request(
        method="POST",
        path="/ota/api/agent/events",
        body=[{"id": "x"}],
        params={"a": "1"},
        name="events",
    )
    response = await transport.send(request)
    assert response.status == 201 and response.headers.get("X-Echo") == "1"
    assert json.loads(response.body) == {
        "method": "POST",
        "path": "/ota/api/agent/events",
        "body": [{"id": "x"}],
        "query": {"a": "1"},
    }


async def test_aiohttp_transport_conforms(echo_server: str) -> None:
    """The real transport sends method, path, query and JSON body, and returns the answer."""
    observed: list[tuple[str, int]] = []
    async with AiohttpTransport(
        echo_server, observer=lambda n, s, d, st, e: observed.append((n, st))
    ) as transport:
        await conformance(transport)
    assert observed == [("events", 201)]


async def test_mock_transport_conforms() -> None:
    """MockTransport behaves the same for a handler with the same logic."""

    async def handler(request: Request) -> Response:
        body = json.dumps(request.body).encode() if request.body is not None else b""
        return await echo_logic(request.method, request.path, body, dict(request.params))

    transport = MockTransport(handler)
    await conformance(transport)
    assert [r.name for r in transport.sent] == ["events"]


def test_tls_options(tmp_path: Path) -> None:
    """Verification is on by default, off with --insecure; a bad CA file is a ConfigError."""
    assert TlsOptions().context() is True
    assert TlsOptions(verify=False).context() is False
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS options"):
        TlsOptions(ca_bundle=bad).context()
