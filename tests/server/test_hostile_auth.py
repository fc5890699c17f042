"""Issue 12, item 4: a login flood. Failed logins are limited per client address and per email
(429 42900 + Retry-After) by pure token buckets, passwords are checked on a bounded pool of their
own (503 50300 + Retry-After when full), and an unknown email costs the same hash as a known one.

The limiter's tests are synchronous with the time passed in; the server's run on its FixedClock,
so buckets refill only when a test advances it. Nothing here measures time (bench/server_hostile
does).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.auth import DUMMY_HASH, PASSWORD_COST, HashPool, verify_password
from server.clock import FixedClock
from server.context import SERVICES, Services
from server.domain.ratelimit import (
    LogThrottle,
    TokenBuckets,
    client_address,
    limit_key,
    parse_networks,
    retry_after_s,
)
from server.errors import Unavailable
from server.limits import (
    LOGIN_ADDRESS_BURST,
    LOGIN_EMAIL_BURST,
    LOGIN_EMAIL_PER_S,
)
from tests.helpers import Client, Reply, Server

StartServer = Callable[..., Awaitable[Server]]  # the server_factory fixture
SAFETY_S = 60.0  # a hung test fails after this long; no test expects to come near it
LOGIN = "/portal/V1/auth"

# -- the limiter, pure ---------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    """`burst` takes pass at once; the next is refused with the time until a token is back."""
    buckets = TokenBuckets(burst=3, per_s=0.5, max_keys=10)
    assert [buckets.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 100.0) == pytest.approx(2.0)
    assert buckets.take("a", 101.0) == pytest.approx(1.0)  # half a token came back meanwhile
    assert buckets.take("a", 102.0) == 0.0
    assert buckets.take("b", 102.0) == 0.0  # keys are independent


def test_a_refused_take_spends_nothing_and_refill_stops_at_the_burst() -> None:
    """Refusals do not dig a hole; an hour idle refills to `burst`, never beyond."""
    buckets = TokenBuckets(burst=2, per_s=1.0, max_keys=10)
    buckets.take("a", 0.0)
    buckets.take("a", 0.0)
    for _ in range(50):
        assert buckets.take("a", 0.0) > 0
    assert buckets.take("a", 1.0) == 0.0
    assert [buckets.take("a", 3600.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_a_clock_stepping_back_refills_nothing() -> None:
    """Time going backwards (a wall-clock step) adds no tokens and never raises."""
    buckets = TokenBuckets(burst=1, per_s=1.0, max_keys=10)
    assert buckets.take("a", 1000.0) == 0.0
    assert buckets.take("a", 10.0) == pytest.approx(1.0)
    assert buckets.take("a", 10.5) == pytest.approx(0.5)
    assert buckets.take("a", 11.0) == 0.0


def test_give_back_returns_a_token_but_never_above_the_burst() -> None:
    """A token that bought nothing comes back; giving back to a full bucket changes nothing."""
    buckets = TokenBuckets(burst=2, per_s=0.001, max_keys=10)
    buckets.take("a", 0.0)
    buckets.take("a", 0.0)
    buckets.give_back("a", 0.0)
    assert buckets.take("a", 0.0) == 0.0
    buckets.give_back("b", 0.0)
    buckets.give_back("b", 0.0)
    assert [buckets.take("b", 0.0) for _ in range(3)][2] > 0


def test_memory_is_bounded_and_the_least_recently_used_key_goes() -> None:
    """At most `max_keys` buckets; the key untouched longest is forgotten (and starts full)."""
    buckets = TokenBuckets(burst=1, per_s=0.001, max_keys=3)
    for key in ("a", "b", "c"):
        buckets.take(key, 0.0)
    assert buckets.take("a", 0.0) > 0  # touches "a": "b" is now the oldest
    buckets.take("d", 0.0)
    assert len(buckets) == 3
    assert buckets.take("c", 0.0) > 0 and buckets.take("a", 0.0) > 0  # kept, still empty
    assert buckets.take("b", 0.0) == 0.0  # forgotten: a full bucket again
    for index in range(10_000):
        buckets.take(f"k{index}", 0.0)
    assert len(buckets) == 3


@given(
    steps=st.lists(
        st.tuples(st.sampled_from("ab"), st.floats(min_value=0, max_value=5)), max_size=200
    ),
    burst=st.integers(min_value=1, max_value=5),
    per_s=st.floats(min_value=0.01, max_value=10),
)
def test_no_key_ever_gets_more_than_burst_plus_refill(
    steps: list[tuple[str, float]], burst: int, per_s: float
) -> None:
    """Whatever the sequence, a key's passes up to time t never exceed burst + per_s * t."""
    buckets = TokenBuckets(burst=burst, per_s=per_s, max_keys=10)
    now = 0.0
    passed = {"a": 0, "b": 0}
    for key, step in steps:
        now += step
        if buckets.take(key, now) == 0.0:
            passed[key] += 1
        assert passed[key] <= burst + per_s * now + 1e-9


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_s(w) for w in (0.0, 0.2, 1.0, 1.01, 19.5)] == [1, 1, 1, 2, 20]


PROXY = parse_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "expected"),
    [
        ("192.0.2.7", [], (), "192.0.2.7"),
        ("192.0.2.7", ["203.0.113.9"], (), "192.0.2.7"),  # no proxy configured: header ignored
        ("192.0.2.7", ["203.0.113.9"], PROXY, "192.0.2.7"),  # the peer is no trusted proxy
        ("10.0.0.2", ["203.0.113.9"], PROXY, "203.0.113.9"),
        ("10.0.0.2", ["1.1.1.1, 203.0.113.9, 10.0.0.3"], PROXY, "203.0.113.9"),  # 2 proxies
        ("10.0.0.2", ["1.1.1.1", "203.0.113.9"], PROXY, "203.0.113.9"),  # two header lines
        ("10.0.0.2", ["garbage"], PROXY, "10.0.0.2"),  # an unparsable hop: the last trusted one
        ("10.0.0.2", [], PROXY, "10.0.0.2"),
        ("::1", ["2001:db8::5"], PROXY, "2001:db8::5"),
        (None, ["203.0.113.9"], PROXY, "unknown"),
    ],
)
def test_client_address_trusts_forwarded_for_only_from_configured_proxies(
    peer: str | None, forwarded: list[str], proxies: Any, expected: str
) -> None:
    assert client_address(peer, forwarded, proxies) == expected


def test_bad_proxy_networks_are_named() -> None:
    with pytest.raises(ValueError, match="'nope' is not an IP address or network"):
        parse_networks(["10.0.0.1", "nope"])


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same host rotating: one key
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unknown", "unknown"),
    ],
)
def test_limit_keys_group_an_ipv6_host_by_its_64(address: str, key: str) -> None:
    assert limit_key(address) == key


def test_log_throttle_writes_one_line_per_interval_with_the_count() -> None:
    """First event: a line (0 suppressed); then silence for the interval; then a line with the
    count of the events it stood for."""
    throttle = LogThrottle(10.0)
    assert throttle.due(100.0) == 0
    assert [throttle.due(t) for t in (101.0, 105.0, 109.9)] == [None, None, None]
    assert throttle.due(110.0) == 3
    assert throttle.due(111.0) is None
    assert throttle.due(50.0) == 1  # a clock stepping back never silences it for good


# -- the server ----------------------------------------------------------------------------------


def services(server: Server) -> Services:
    assert server.app is not None
    return server.app[SERVICES]


async def login(
    http: aiohttp.ClientSession,
    server: Server,
    email: str,
    password: str,
    key: str | None = None,
    forwarded_for: str | None = None,
) -> Reply:
    body = {"email": email, "password": password, "type": "email"}
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    return await Client(http, server.base, key).call("POST", LOGIN, json_body=body, headers=headers)


def tokens_issued(server: Server) -> int:
    return int(server.sql("SELECT COUNT(*) AS n FROM access_tokens")[0]["n"])


async def test_failed_logins_on_one_email_are_limited(
    server: Server, http: aiohttp.ClientSession, clock: FixedClock
) -> None:
    """LOGIN_EMAIL_BURST wrong passwords are 40100; then 429 42900 with Retry-After, even for the
    right password (checked no more until a token is back), and no token is issued; after the
    wait the right password logs in."""
    email = server.sites["alpha"].email
    for _ in range(LOGIN_EMAIL_BURST):
        assert (await login(http, server, email, "wrong")).code == 40100
    for password in ("wrong", "pw-alpha"):
        refused = await login(http, server, email.upper(), password)  # emails fold case
        assert (refused.status, refused.code) == (429, 42900)
        assert "too many failed logins for this email" in refused.body["message"]
        wait = round(1 / LOGIN_EMAIL_PER_S)
        assert refused.headers["Retry-After"] == str(wait)
    assert tokens_issued(server) == 0
    beta = server.sites["beta"]
    assert (await login(http, server, beta.email, beta.password)).status == 200  # other emails
    clock.advance(wait)
    assert (await login(http, server, email, "pw-alpha")).status == 200


async def test_failed_logins_from_one_address_are_limited(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """LOGIN_ADDRESS_BURST failures from one address (over several emails, known or not) are
    40100; the next login from there is 429 whatever its email, and nothing is issued."""
    emails = [server.sites["alpha"].email, server.sites["beta"].email, "nobody@alpha.test"]
    for index in range(LOGIN_ADDRESS_BURST):
        email = emails[index % len(emails)]
        assert (await login(http, server, email, "wrong")).code == 40100
    refused = await login(http, server, "someone-else@alpha.test", "wrong")
    assert (refused.status, refused.code) == (429, 42900)
    assert "too many failed logins from this address" in refused.body["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    alpha = server.sites["alpha"]
    assert (await login(http, server, alpha.email, alpha.password)).status == 429
    assert tokens_issued(server) == 0


async def fail_burst_of_one_address(
    http: aiohttp.ClientSession, server: Server, forwarded_for: str | None = None
) -> None:
    """LOGIN_ADDRESS_BURST wrong passwords, shared over the two admins' emails (each takes
    LOGIN_EMAIL_BURST: cheap test hashes, and no email runs dry before the address does)."""
    emails = [server.sites["alpha"].email, server.sites["beta"].email]
    assert len(emails) * LOGIN_EMAIL_BURST >= LOGIN_ADDRESS_BURST
    for index in range(LOGIN_ADDRESS_BURST):
        email = emails[index % len(emails)]
        reply = await login(http, server, email, "wrong", forwarded_for=forwarded_for)
        assert reply.code == 40100


async def test_forwarded_for_names_the_client_only_behind_a_trusted_proxy(
    server_factory: StartServer, http: aiohttp.ClientSession
) -> None:
    """With --trusted-proxy naming the peer (127.0.0.1 here), the X-Forwarded-For client is
    the one counted: another client behind the proxy is not refused with the first."""
    server = await server_factory(trusted_proxies=parse_networks(["127.0.0.1"]))
    await fail_burst_of_one_address(http, server, forwarded_for="203.0.113.1")
    refused = await login(http, server, "x@alpha.test", "wrong", forwarded_for="203.0.113.1")
    assert refused.code == 42900 and "from this address" in refused.body["message"]
    other = await login(http, server, "x@alpha.test", "wrong", forwarded_for="203.0.113.2")
    assert other.code == 40100


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """Without --trusted-proxy anyone can write X-Forwarded-For: it does not escape the limit."""
    await fail_burst_of_one_address(http, server, forwarded_for="203.0.113.1")
    refused = await login(http, server, "x@alpha.test", "wrong", forwarded_for="203.0.113.2")
    assert refused.code == 42900


async def test_an_unknown_email_is_limited_like_a_known_one(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """The limit answers the same for an email that has no account: it reveals nothing."""
    answers = [
        (r.status, r.code)
        for r in [
            await login(http, server, "nobody@alpha.test", "wrong")
            for _ in range(LOGIN_EMAIL_BURST + 1)
        ]
    ]
    assert answers == [(401, 40100)] * LOGIN_EMAIL_BURST + [(429, 42900)]


async def test_right_passwords_spend_no_tokens(server: Server, http: aiohttp.ClientSession) -> None:
    """Only failures count: more good logins than either burst all succeed (a fleet enrolling
    with one admin account from one NAT is not throttled by the limiter)."""
    alpha = server.sites["alpha"]
    for _ in range(LOGIN_ADDRESS_BURST + 5):
        assert (await login(http, server, alpha.email, alpha.password)).status == 200
    assert tokens_issued(server) == LOGIN_ADDRESS_BURST + 5


def counting_verify(calls: list[tuple[str, str]]) -> Callable[[str, str], bool]:
    def verify(password: str, stored: str) -> bool:
        calls.append((stored, threading.current_thread().name))
        return verify_password(password, stored)

    return verify


async def test_an_unknown_email_costs_a_dummy_hash_of_production_cost(
    server: Server, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted through the seam, not timed: an unknown email is checked against DUMMY_HASH (the
    cost of every hash the server writes), a known one against its own hash, both on the login
    pool's thread rather than the default executor that file reads use."""
    auth = services(server).auth
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(auth, "verify", counting_verify(calls))
    assert (await login(http, server, "nobody@alpha.test", "pw-alpha")).code == 40100
    assert (await login(http, server, server.sites["alpha"].email, "wrong")).code == 40100
    stored_alpha = server.sql(
        "SELECT password_hash FROM users WHERE email = ?", server.sites["alpha"].email
    )[0]["password_hash"]
    assert [stored for stored, _ in calls] == [DUMMY_HASH, stored_alpha]
    assert DUMMY_HASH.startswith(f"scrypt${PASSWORD_COST}$8$1$")
    assert all(thread.startswith("login-hash") for _, thread in calls), calls
    assert tokens_issued(server) == 0


async def test_a_full_hash_pool_answers_503_and_spends_no_tokens(
    server: Server, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the pool is full a login is 503 50300 with Retry-After (not queued without bound);
    it spent no limiter token, and once the pool drains logins work again."""
    auth = services(server).auth
    pool = HashPool(workers=1, queue=1)
    monkeypatch.setattr(auth, "hashes", pool)
    loop = asyncio.get_running_loop()
    entered, release = asyncio.Event(), threading.Event()

    def blocking(password: str, stored: str) -> bool:
        loop.call_soon_threadsafe(entered.set)
        release.wait(SAFETY_S)
        return verify_password(password, stored)

    monkeypatch.setattr(auth, "verify", blocking)
    alpha = server.sites["alpha"]
    try:
        async with asyncio.timeout(SAFETY_S):
            first = asyncio.create_task(login(http, server, alpha.email, alpha.password))
            await entered.wait()
            for _ in range(LOGIN_EMAIL_BURST + 1):  # more than a bucket: none is spent
                busy = await login(http, server, alpha.email, "wrong")
                assert (busy.status, busy.code) == (503, 50300)
                assert busy.headers["Retry-After"] == "1"
            release.set()
            assert (await first).status == 200
            assert (await login(http, server, alpha.email, alpha.password)).status == 200
    finally:
        release.set()
        pool.close()
    assert tokens_issued(server) == 2


async def test_the_pool_admits_queue_checks_and_refuses_the_next() -> None:
    """HashPool alone: `queue` checks run or wait, the next raises Unavailable (Retry-After),
    and a slot frees when its check ends."""
    pool = HashPool(workers=1, queue=2)
    release = threading.Event()

    def slow(password: str, stored: str) -> bool:
        release.wait(SAFETY_S)
        return password == stored

    try:
        async with asyncio.timeout(SAFETY_S):
            admitted = [asyncio.create_task(pool.run(slow, "a", "a")) for _ in range(2)]
            await asyncio.sleep(0)  # let both tasks take their slot (a yield, not a wait)
            with pytest.raises(Unavailable) as refused:
                await pool.run(slow, "a", "a")
            assert refused.value.retry_after == 1
            release.set()
            assert await asyncio.gather(*admitted) == [True, True]
            assert await pool.run(slow, "a", "b") is False
    finally:
        release.set()
        pool.close()


async def test_a_lone_surrogate_in_a_login_is_a_clear_400(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """Text that is not valid Unicode in email or password is 40001, never a 500."""
    raw = b'{"email":"admin@alpha.test","password":"\\ud800","type":"email"}'
    reply = await Client(http, server.base, None).call("POST", LOGIN, raw=raw)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    raw = b'{"email":"\\udfff@alpha.test","password":"x","type":"email"}'
    reply = await Client(http, server.base, None).call("POST", LOGIN, raw=raw)
    assert (reply.status, reply.code) == (400, 40001), reply.body
    assert tokens_issued(server) == 0
