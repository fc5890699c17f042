"""Device API hot path: sustained check-ins with 10,000 registered devices and 5,000 open
WebSockets; throughput and p50/p99 latency.

    python -m bench.server_checkin [--devices 10000] [--sockets 5000] [--seconds 20]
                                   [--concurrency 64]

The server runs in its own process (`midm-server`, temp SQLite file); this process is the
client. After enrolment (device/save, register) and one first check-in per device (a change,
written before the answer), the measured loop sends heartbeat check-ins (nothing changed but
the time) round-robin over all devices for `--seconds` or `--max-requests`, whichever ends
first. Baseline in the same run: an unknown path (the envelope 404 through the same
middlewares), so the figures are also given as ratios. Target (issue 3): >= 2,000 check-ins/s
with p99 < 50 ms on this 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import API_KEY, emit, login, server_process, timed_loop

CHECKIN = {
    "states": {"clientVersion": 1, "rtcEnabled": True, "state": "online"},
    "activity": "active",
    "power": {"ac": True, "battery": 90},
    "network": "wifi",
    "build": {
        "fingerprint": "acme/dev/dev:14/UP1A/1:user/release-keys",
        "buildDate": 1700000000,
        "deviceId": "dev",
        "abUpdate": True,
    },
    "inventoryHash": "h",
}


async def enroll(
    http: aiohttp.ClientSession, base: str, admin: dict[str, str], count: int
) -> tuple[list[str], float]:
    started = time.perf_counter()
    for first in range(0, count, 500):
        body = [
            {"profile": {"hardware_info": {"serial_no": f"SIM{i:06d}"}}}
            for i in range(first, min(count, first + 500))
        ]
        async with http.post(f"{base}/ota/api/device/save", headers=admin, json=body) as r:
            assert r.status == 200, await r.text()
    tokens: list[str] = [""] * count

    async def register(i: int) -> bool:
        async with http.post(
            f"{base}/ota/api/agent/register",
            headers={"X-API-Key": API_KEY},
            json={"serialNo": f"SIM{i:06d}"},
        ) as r:
            tokens[i] = (await r.json())["data"]["token"]
            return r.status == 200

    await timed_loop("register", register, count=count, concurrency=16, time_limit_s=600)
    return tokens, time.perf_counter() - started


def device_headers(token: str) -> dict[str, str]:
    return {"X-API-Key": API_KEY, "Authorization": f"Device {token}"}


async def run(
    devices: int, sockets: int, seconds: float, concurrency: int, max_requests: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            server_process(Path(tmp) / "bench.sqlite") as base,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency + 16, limit_per_host=0)
            ) as http,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as ws_http,
        ):
            admin = await login(http, base)
            tokens, enroll_s = await enroll(http, base, admin, devices)

            open_sockets: list[aiohttp.ClientWebSocketResponse] = []
            started = time.perf_counter()

            async def connect(i: int) -> bool:
                ws = await ws_http.ws_connect(
                    f"{base}/ota/api/agent/ws", headers=device_headers(tokens[i]), heartbeat=None
                )
                open_sockets.append(ws)
                return True

            await timed_loop("ws", connect, count=sockets, concurrency=50, time_limit_s=300)
            sockets_s = time.perf_counter() - started

            async def checkin(i: int) -> bool:
                async with http.post(
                    f"{base}/ota/api/agent/checkin",
                    json=CHECKIN,
                    headers=device_headers(tokens[i % devices]),
                ) as r:
                    await r.read()
                    return r.status == 200

            first = await timed_loop(
                "first_checkin", checkin, count=devices, concurrency=concurrency, time_limit_s=300
            )

            async def baseline(i: int) -> bool:
                async with http.get(f"{base}/ota/api/no-such-path") as r:
                    await r.read()
                    return r.status == 404

            base_timing = await timed_loop(
                "baseline_404",
                baseline,
                count=max_requests,
                concurrency=concurrency,
                time_limit_s=seconds,
            )
            heartbeat = await timed_loop(
                "heartbeat_checkin",
                checkin,
                count=max_requests,
                concurrency=concurrency,
                time_limit_s=seconds,
            )
            still_open = sum(1 for ws in open_sockets if not ws.closed)
            await asyncio.gather(*(ws.close() for ws in open_sockets), return_exceptions=True)
            summary = heartbeat.summary()
            base_summary = base_timing.summary()
            return {
                "bench": "server_checkin",
                "devices": devices,
                "open_websockets": still_open,
                "concurrency": concurrency,
                "enroll_seconds": round(enroll_s, 1),
                "websocket_connect_seconds": round(sockets_s, 1),
                "first_checkin": first.summary(),
                "baseline_404": base_summary,
                "heartbeat_checkin": summary,
                "checkin_rps_ratio_to_baseline": round(
                    summary["rps"] / (base_summary["rps"] or 1), 3
                ),
                "target_2000_rps_p99_under_50ms": summary["rps"] >= 2000 and summary["p99_ms"] < 50,
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sockets", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args()
    emit(
        asyncio.run(
            run(args.devices, args.sockets, args.seconds, args.concurrency, args.max_requests)
        )
    )


if __name__ == "__main__":
    main()
