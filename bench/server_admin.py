"""Admin API throughput and latency with 100k devices: device save (batches of 100), findBy, find.

    python bench/server_admin.py [--devices 100000] [--requests 2000] [--concurrency 8]

The server runs in its own process (`midm-server`, temp SQLite file); this process is the one
client. Each request kind is measured twice: throughput with `--concurrency` requests in flight,
and latency one request at a time. Baseline, in the same run: `device/exists` (the HTTP + auth +
one indexed lookup path); every figure is also given as a ratio to it. Target (issue 2): find
(20-item pages) median latency under 50 ms with 100k devices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import emit, login, server_process, timed_loop

BATCH = 100


async def run(devices: int, requests: int, concurrency: int) -> dict[str, Any]:
    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            server_process(Path(tmp) / "bench.sqlite") as base,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as http,
        ):
            headers = await login(http, base)
            groups = []
            for name in ("lab", "field", "stage"):
                async with http.post(
                    f"{base}/ota/api/device/group/save",
                    headers=headers,
                    json={"profile": {"name": name}},
                ) as r:
                    groups.append((await r.json())["data"]["uuid"])
            models = ["M1", "M2", "M3", "M4"]

            async def save(i: int) -> bool:
                body = [
                    {
                        "profile": {
                            "hardware_info": {
                                "serial_no": f"SN{i * BATCH + j:07d}",
                                "manufacturer": "Acme",
                                "brand": "A",
                                "model": models[(i + j) % 4],
                            }
                        },
                        "groupUuid": groups[(i + j) % 3],
                    }
                    for j in range(BATCH)
                ]
                async with http.post(
                    f"{base}/ota/api/device/save", headers=headers, json=body
                ) as r:
                    await r.read()
                    return r.status == 200

            started = time.perf_counter()
            saving = await timed_loop(
                "device_save_batch100",
                save,
                count=devices // BATCH,
                concurrency=concurrency,
                time_limit_s=600,
            )
            seeded = len(saving.latencies_ms) * BATCH
            seed_s = time.perf_counter() - started
            async with http.get(
                f"{base}/ota/api/device/find", headers=headers, params={"size": "500"}
            ) as r:
                uuids = [d["uuid"] for d in (await r.json())["data"]]

            def getter(path: str, params: Any) -> Any:
                async def call(i: int) -> bool:
                    async with http.get(f"{base}{path}", headers=headers, params=params(i)) as r:
                        await r.read()
                        return r.status == 200

                return call

            def serial(i: int) -> str:
                return f"SN{rng.randrange(seeded):07d}"

            loops = {
                "baseline_exists": getter(
                    "/ota/api/device/exists", lambda i: {"serialNo": serial(i)}
                ),
                "findBy_serial": getter(
                    "/ota/api/device/findBy", lambda i: {"serialNo": serial(i)}
                ),
                "findBy_uuid": getter(
                    "/ota/api/device/findBy", lambda i: {"uuid": uuids[i % len(uuids)]}
                ),
                "find_page_default": getter(
                    "/ota/api/device/find", lambda i: {"page": str(rng.randrange(50)), "size": "20"}
                ),
                "find_sort_serial_desc": getter(
                    "/ota/api/device/find",
                    lambda i: {
                        "page": str(rng.randrange(50)),
                        "size": "20",
                        "sortBy": "profile.hardware_info.serial_no",
                        "direction": "desc",
                    },
                ),
                "find_filter_group": getter(
                    "/ota/api/device/find",
                    lambda i: {
                        "size": "20",
                        "filter": json.dumps({"deviceGroup.uuid": groups[i % 3]}),
                    },
                ),
                "find_filter_model_state": getter(
                    "/ota/api/device/find",
                    lambda i: {
                        "size": "20",
                        "filter": json.dumps(
                            {
                                "profile.hardware_info.model": "M2",
                                "states.state": ["offline", "online"],
                            }
                        ),
                    },
                ),
                "find_size_500": getter("/ota/api/device/find", lambda i: {"size": "500"}),
            }
            results: dict[str, Any] = {}
            for name, call in loops.items():
                for i in range(20):  # warm-up, not measured
                    await call(i)
                loaded = await timed_loop(
                    name, call, count=requests, concurrency=concurrency, time_limit_s=60
                )
                alone = await timed_loop(
                    name, call, count=max(50, requests // 4), concurrency=1, time_limit_s=60
                )
                results[name] = {"throughput": loaded.summary(), "latency": alone.summary()}
            base = results["baseline_exists"]
            for figures in results.values():
                figures["rps_ratio_to_baseline"] = round(
                    figures["throughput"]["rps"] / (base["throughput"]["rps"] or 1.0), 3
                )
                figures["p50_ratio_to_baseline"] = round(
                    figures["latency"]["p50_ms"] / (base["latency"]["p50_ms"] or 1.0), 2
                )
            save_summary = saving.summary()
            save_summary["devices_per_s"] = round(seeded / seed_s, 1)
            return {
                "bench": "server_admin",
                "devices": seeded,
                "concurrency": concurrency,
                "device_save_batch100": save_summary,
                **results,
                "target_find_p50_under_50ms": all(
                    v["latency"]["p50_ms"] < 50
                    for k, v in results.items()
                    if k.startswith("find_") and k != "find_size_500"
                ),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    emit(asyncio.run(run(args.devices, args.requests, args.concurrency)))


if __name__ == "__main__":
    main()
