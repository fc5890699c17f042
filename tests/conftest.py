"""Fixtures: a running server with two sites ("alpha", "beta"), and admin clients for each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from server.clock import FixedClock
from server.config import ServerConfig
from server.services.upload_parsers import new_parser_pool
from tests.helpers import Client, Server, fixed_clock, seed_sites

StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture(scope="session")
def parser_pool() -> Iterator[Executor]:
    """One upload-parser worker for the whole session: starting one per server (a process that
    imports androguard) was most of the set-up time of tests that upload."""
    pool = new_parser_pool()
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def clock() -> FixedClock:
    return fixed_clock()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., ServerConfig]:
    def make(**overrides: object) -> ServerConfig:
        overrides.setdefault("port", 0)
        return ServerConfig.for_db(tmp_path / "midm.sqlite", **overrides)

    return make


@pytest.fixture
async def server_factory(
    make_config: Callable[..., ServerConfig], clock: FixedClock, parser_pool: Executor
) -> AsyncIterator[StartServer]:
    started: list[Server] = []

    async def start(
        customize: Callable[[web.Application], None] | None = None, **overrides: object
    ) -> Server:
        config = make_config(**overrides)
        server = Server(config=config, clock=clock, customize=customize, parser_pool=parser_pool)
        server.sites = seed_sites(config, clock, ["alpha", "beta"])
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def server(server_factory: StartServer) -> Server:
    return await server_factory()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _admin(server: Server, http: aiohttp.ClientSession, name: str) -> Client:
    site = server.sites[name]
    client = Client(http, server.base, site.key)
    await client.login(site.email, site.password)
    return client


@pytest.fixture
async def admin(server: Server, http: aiohttp.ClientSession) -> Client:
    return await _admin(server, http, "alpha")


@pytest.fixture
async def other(server: Server, http: aiohttp.ClientSession) -> Client:
    return await _admin(server, http, "beta")
