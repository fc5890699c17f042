"""Transports for a fleet: thousands of agents in one process on one ClientSession.

Why a session of its own: aiohttp's connector allows 100 connections by default, and a WebSocket
keeps its connection for as long as it is open. On a default session the 101st agent's push
channel, and after it every request of every agent, waits for a free connection that never comes.
`fleet_session()` lifts that limit (the process's open-files limit is the real one: one socket per
push channel, plus one per request in flight or idle in the pool, so raise RLIMIT_NOFILE above
the fleet's size), caches DNS answers for minutes instead of 10 s, and keeps idle connections for
reuse a little below a server's usual 75 s idle limit, so a check-in rarely reconnects.

`FleetTransports` owns that session and one `Endpoint` (URL, timeouts, TLS context built once);
`transport()` makes an agent's AiohttpTransport of a few pointers (slotted, no dict).
"""

from __future__ import annotations

import math
import sys
from typing import Self

import aiohttp

from agent.clock import Clock
from agent.transport.base import Observer, no_observer
from agent.transport.client import SYSTEM_CLOCK, AiohttpTransport, Endpoint, TlsOptions

KEEPALIVE_S = 30.0  # below the idle limit of aiohttp.web and nginx (75 s)
# aiohttp rounds a timer longer than its connector's `timeout_ceil_threshold` (5 s) up to a whole
# second of loop time: every push channel's 30 s heartbeat then fires on the same tick, and a
# fleet of 15,000 sent ~500 pings in one burst each second (a 10 ms stall of the worker's loop,
# the p99 of its send lag). Never rounded, each channel pings on its own schedule.
EXACT_TIMERS = math.inf
DNS_TTL_S = 300
# An aborted TLS connection leaked its transport before CPython 3.12.8 (and in 3.13.0); aiohttp's
# cleanup of those is a deprecated no-op (it warns) elsewhere.
CLEANUP_CLOSED = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)


def fleet_connector(
    *, limit: int = 0, keepalive_s: float = KEEPALIVE_S, dns_ttl_s: int = DNS_TTL_S
) -> aiohttp.TCPConnector:
    """A connector for many agents: `limit` connections in all (0: no limit), none per host.
    Call it with the event loop running."""
    return aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=0,
        keepalive_timeout=keepalive_s,
        ttl_dns_cache=dns_ttl_s,
        enable_cleanup_closed=CLEANUP_CLOSED,
        timeout_ceil_threshold=EXACT_TIMERS,
    )


def fleet_session(
    *, limit: int = 0, keepalive_s: float = KEEPALIVE_S, dns_ttl_s: int = DNS_TTL_S
) -> aiohttp.ClientSession:
    """A ClientSession on `fleet_connector()`, which it owns (closing it closes every socket).
    Call it with the event loop running."""
    return aiohttp.ClientSession(
        connector=fleet_connector(limit=limit, keepalive_s=keepalive_s, dns_ttl_s=dns_ttl_s)
    )


class FleetTransports:
    """One session and one Endpoint for a fleet of agents talking to one server.

    async with FleetTransports(url, timeout_s=10, clock=clock, observer=stats) as fleet:
        agents = [Agent(transport=fleet.transport(), ...) for ...]

    Leaving the block closes the session and with it every agent's connections.
    """

    def __init__(
        self,
        server: str | Endpoint,
        *,
        timeout_s: float = 10.0,
        tls: TlsOptions | None = None,
        clock: Clock = SYSTEM_CLOCK,
        observer: Observer = no_observer,
        limit: int = 0,
        keepalive_s: float = KEEPALIVE_S,
        dns_ttl_s: int = DNS_TTL_S,
    ) -> None:
        if isinstance(server, Endpoint):
            self.endpoint = server
        else:
            self.endpoint = Endpoint.build(server, timeout_s=timeout_s, tls=tls)
        self.clock = clock
        self.observer = observer
        self.limit, self.keepalive_s, self.dns_ttl_s = limit, keepalive_s, dns_ttl_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self.session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self) -> aiohttp.ClientSession:
        """The shared session (made on first use, with the loop running)."""
        if self._session is None:
            self._session = fleet_session(
                limit=self.limit, keepalive_s=self.keepalive_s, dns_ttl_s=self.dns_ttl_s
            )
        return self._session

    def transport(
        self, *, clock: Clock | None = None, observer: Observer | None = None
    ) -> AiohttpTransport:
        """An agent's transport on the shared session; by default the fleet's clock and
        observer. Closing it does nothing: the session is the fleet's."""
        return AiohttpTransport(
            self.endpoint,
            session=self.session(),
            clock=clock or self.clock,
            observer=observer or self.observer,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
