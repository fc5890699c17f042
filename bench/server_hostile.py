"""The server under a login flood and under half-open connections (issue 12, items 4 and 5).

    python -m bench.server_hostile [--rate 50] [--flood-s 10] [--half-open 2000] [--requests 300]

`midm-server` runs in its own process on a temp database, its admin password hashed at the real
production cost (scrypt n=2**14, seeded through MIDM_ADMIN_PASSWORD); this process is every
client, on loopback only. Every loop is bounded in count and time.

Logins: a file download (a 64 KiB OTA) is timed back to back, first alone, then during a
wrong-password flood of `--rate` logins a second for `--flood-s` seconds, sent on schedule
(open loop) from one address (the limiter answers most with 429), then again spread over 100
loopback addresses (127.0.0.2-101) and as many unknown emails, so that no limit applies and
every login reaches the hash pool (which answers the excess 503). Before the floods, the time of
a wrong password for the admin's email and for unknown emails, one at a time from an address of
their own: equal, so it no longer tells whether an account exists.
Target: download p99 under 50 ms during the flood, next to the no-flood p99 of the same run.

Connections: a normal request (group/all on a kept-alive connection, and on a new connection
each time) timed one at a time, alone, then with `--half-open` connections held that each sent
half a request head; then how many of those the server closed by itself (head timeout, 15 s).
Target: normal request p99 under 100 ms with 2,000 half-open connections held.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import resource
import statistics
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import EMAIL, Timing, emit, login, server_process, timed_loop
from server.limits import HEADER_TIMEOUT_S

SPREAD_ADDRESSES = 100
OTA_META = (
    "ota-type=AB\npre-device=walleye\n"
    "post-build=acme/walleye/walleye:14/UP1A/200:user/release-keys\npost-timestamp=1790000000\n"
)


def raise_open_files(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return int(soft)


def ota_zip(payload_bytes: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("META-INF/com/android/metadata", OTA_META)
        archive.writestr("payload.bin", bytes(range(256)) * (payload_bytes // 256))
    return buffer.getvalue()


async def upload(http: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> str:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(ota_zip(64 * 1024)), filename="bench.zip")
    async with http.post(f"{base}/ota/api/ota/upload", data=form, headers=headers) as r:
        body = await r.json()
        assert r.status == 200, body
        return str(body["data"]["fileUuid"])


async def flood(
    sessions: list[aiohttp.ClientSession], base: str, *, rate: float, seconds: float, spread: bool
) -> dict[str, Any]:
    """`rate` wrong-password logins a second for `seconds`, each sent at its scheduled time
    whatever the answers before it (open loop)."""
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    start = loop.time() + 0.05

    async def one(index: int) -> None:
        await asyncio.sleep(max(0.0, start + index / rate - loop.time()))
        email = f"nobody-{index}@flood.test" if spread else EMAIL
        began = time.perf_counter()
        try:
            async with sessions[index % len(sessions)].post(
                f"{base}/portal/V1/auth", json={"email": email, "password": f"guess-{index}"}
            ) as r:
                await r.read()
                statuses[str(r.status)] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            statuses[type(exc).__name__] += 1
        latencies.append((time.perf_counter() - began) * 1000)

    async with asyncio.timeout(seconds + 120), asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(one(index))
    timing = Timing("flood", latencies, seconds, 0).summary()
    return {
        "sent": count,
        "statuses": dict(sorted(statuses.items())),
        "p50_ms": timing["p50_ms"],
        "p99_ms": timing["p99_ms"],
    }


async def downloads_during(
    name: str, download: Any, flood_task: asyncio.Task[dict[str, Any]] | None, count: int
) -> Timing:
    """Downloads back to back until `count`, or until the flood (if any) is over."""
    latencies: list[float] = []
    errors = 0
    began = time.perf_counter()
    deadline = began + 120
    while len(latencies) < count and time.perf_counter() < deadline:
        if flood_task is not None and flood_task.done():
            break
        started = time.perf_counter()
        ok = await download()
        latencies.append((time.perf_counter() - started) * 1000)
        errors += 0 if ok else 1
    return Timing(name, latencies, time.perf_counter() - began, errors)


async def login_timing(base: str, samples: int) -> dict[str, Any]:
    """One wrong login at a time, from an address no flood used: known email vs unknown."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.250", 0))
    known: list[float] = []
    unknown: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as http:
        for index in range(samples):
            for email, into in ((EMAIL, known), (f"absent-{index}@bench.test", unknown)):
                began = time.perf_counter()
                async with http.post(
                    f"{base}/portal/V1/auth", json={"email": email, "password": "wrong"}
                ) as r:
                    await r.read()
                    assert r.status == 401, r.status
                into.append((time.perf_counter() - began) * 1000)
    return {
        "samples_each": samples,
        "known_email_wrong_password_median_ms": round(statistics.median(known), 2),
        "unknown_email_median_ms": round(statistics.median(unknown), 2),
    }


async def login_flood(
    base: str, headers: dict[str, str], rate: float, seconds: float
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        file_uuid = await upload(http, base, headers)
        url = f"{base}/ota/api/file/{file_uuid}"

        async def download() -> bool:
            async with http.get(url, headers=headers) as r:
                await r.read()
                return r.status == 200

        for _ in range(20):  # warm-up
            await download()
        timing = await login_timing(base, samples=8)
        count = int(rate * seconds * 4)  # more than the flood lasts: the flood's end stops it
        alone = await downloads_during("no_flood", download, None, min(count, 1000))
        results: dict[str, Any] = {"downloads_no_flood": alone.summary(), "login_timing": timing}
        one = [aiohttp.ClientSession() for _ in range(1)]
        spread = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + k}", 0))
            )
            for k in range(SPREAD_ADDRESSES)
        ]
        try:
            for name, sessions, is_spread in (
                ("one_address", one, False),
                ("spread", spread, True),
            ):
                task = asyncio.create_task(
                    flood(sessions, base, rate=rate, seconds=seconds, spread=is_spread)
                )
                during = await downloads_during(name, download, task, count)
                results[f"flood_{name}"] = await task
                results[f"downloads_flood_{name}"] = during.summary()
        finally:
            for session in one + spread:
                await session.close()
    worst = max(results[f"downloads_flood_{n}"]["p99_ms"] for n in ("one_address", "spread"))
    return {
        "rate_per_s": rate,
        "flood_s": seconds,
        **results,
        "target_download_p99_under_50ms": worst < 50,
    }


async def half_open(base: str, headers: dict[str, str], held: int, requests: int) -> dict[str, Any]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    async with aiohttp.ClientSession() as http:

        async def normal(_: int) -> bool:
            async with http.get(f"{base}/ota/api/device/group/all", headers=headers) as r:
                await r.read()
                return r.status == 200

        fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

        async def normal_new_connection(_: int) -> bool:
            async with fresh.get(f"{base}/ota/api/device/group/all", headers=headers) as r:
                await r.read()
                return r.status == 200

        try:
            for _ in range(20):
                await normal(0)
            alone = await timed_loop(
                "no_load", normal, count=requests, concurrency=1, time_limit_s=60
            )
            alone_new = await timed_loop(
                "no_load_new", normal_new_connection, count=requests, concurrency=1, time_limit_s=60
            )
            connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            opened_at = time.perf_counter()
            async with asyncio.timeout(60):
                for _ in range(held):
                    reader, writer = await asyncio.open_connection(host, int(port))
                    writer.write(b"GET /ota/api/device/group/all HTTP/1.1\r\nHost: b\r\nX-Api")
                    connections.append((reader, writer))
            opening_s = time.perf_counter() - opened_at
            loaded = await timed_loop(
                "half_open", normal, count=requests, concurrency=1, time_limit_s=60
            )
            loaded_new = await timed_loop(
                "half_open_new",
                normal_new_connection,
                count=requests,
                concurrency=1,
                time_limit_s=60,
            )

            async def closed_by_server(reader: asyncio.StreamReader) -> bool:
                try:
                    return await reader.read(1) == b""
                except ConnectionError:
                    return True

            last_opened = opened_at + opening_s
            try:
                async with asyncio.timeout(HEADER_TIMEOUT_S + 15):
                    closed = await asyncio.gather(*(closed_by_server(r) for r, _ in connections))
            except TimeoutError:
                closed = []
            waited_s = time.perf_counter() - last_opened
            for _, writer in connections:
                writer.close()
        finally:
            await fresh.close()
    worst = max(loaded.summary()["p99_ms"], loaded_new.summary()["p99_ms"])
    return {
        "held": held,
        "opening_s": round(opening_s, 2),
        "no_load_keep_alive": alone.summary(),
        "no_load_new_connection": alone_new.summary(),
        "with_half_open_keep_alive": loaded.summary(),
        "with_half_open_new_connection": loaded_new.summary(),
        "half_open_closed_by_server": sum(closed),
        "all_closed_s_after_the_last_opened": round(waited_s, 1) if closed else None,
        "target_p99_under_100ms": worst < 100,
    }


async def run(rate: float, flood_s: float, held: int, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with server_process(Path(tmp) / "bench.sqlite") as base:
            async with aiohttp.ClientSession() as http:
                headers = await login(http, base)  # before the flood empties the admin's bucket
            flooded = await login_flood(base, headers, rate, flood_s)
            connections = await half_open(base, headers, held, requests)
    return {"bench": "server_hostile", "login_flood": flooded, "half_open": connections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=50.0, help="wrong-password logins a second")
    parser.add_argument("--flood-s", type=float, default=10.0, help="seconds each flood lasts")
    parser.add_argument("--half-open", type=int, default=2000, help="half-open connections held")
    parser.add_argument("--requests", type=int, default=300, help="normal requests per figure")
    args = parser.parse_args()
    files = raise_open_files(args.half_open + 1024)
    if files < args.half_open + 256:
        raise SystemExit(f"the open-files limit ({files}) is too low for --half-open")
    emit(asyncio.run(run(args.rate, args.flood_s, args.half_open, args.requests)))


if __name__ == "__main__":
    main()
