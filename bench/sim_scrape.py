"""What a Prometheus scrape of `midm-sim run --metrics-port` costs the simulator's loop.

A scrape runs on the generator's own event loop (simulator.prometheus), so its time is a stall
every agent's timer suffers. This fills a Metrics as a long, busy run would (every device
endpoint with a heavy-tailed latency histogram, admin endpoints, the send-lag probe's samples, a
few profiles over many devices), then times the exposition: cold (every histogram moved since
the last scrape, the worst case) and warm (nothing moved), and one real scrape over 127.0.0.1.
Prints JSON. Bounded: a fixed number of scrapes, loopback only.

    .venv/bin/python -m bench.sim_scrape [--values 200000] [--devices 50000] [--scrapes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import Any

import aiohttp
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from agent.transport.base import Exchange
from simulator import figures, prometheus
from simulator.metrics import Metrics, Usage

ENDPOINTS = ("register", "checkin", "apps", "profiles", "ota_next", "events", "push", "download")
ADMIN = ("admin:auth", "admin:device/save", "admin:profile/save", "admin:app/upload")


def filled(values: int, devices: int, rng: random.Random) -> Metrics:
    clock = time.monotonic
    metrics = Metrics(clock, usage=lambda: Usage(cpu_s=1.0, rss_mb=100.0))
    for name in ENDPOINTS:
        for _ in range(values // len(ENDPOINTS)):
            seconds = min(60.0, rng.lognormvariate(-4, 1.5))  # 18 ms median, tail to seconds
            metrics.observe(
                Exchange(name=name, intended=0, started=0, duration=seconds, status=200, error=None)
            )
    for name in ADMIN:
        metrics.observe(
            Exchange(name=name, intended=0, started=0, duration=0.05, status=200, error=None)
        )
    for _ in range(values):
        metrics.record_send_lag(rng.expovariate(1000), interval_s=0.01)
    for profile in range(3):
        uuid = f"u-{profile}"
        metrics.profile_saved(f"profile-{profile}", uuid, at_s=1.0)
        for device in range(devices):
            status = "applied" if device % 50 else "failed"
            event = {"profileUuid": uuid, "kind": "profile", "status": status}
            metrics.device_event(f"S-{device}", event)
    return metrics


def timed_ms(action: Any, count: int) -> dict[str, float]:
    """Wall and CPU time of `action` (median, max): on a loaded machine the wall time waits for
    a core, the CPU time is the loop's stall on an idle one."""
    wall, cpu = [], []
    for _ in range(count):
        start, start_cpu = time.perf_counter(), time.thread_time()
        action()
        cpu.append((time.thread_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    wall.sort()
    cpu.sort()
    return {
        "wall_median_ms": round(statistics.median(wall), 3),
        "wall_max_ms": round(wall[-1], 3),
        "cpu_median_ms": round(statistics.median(cpu), 3),
        "cpu_max_ms": round(cpu[-1], 3),
    }


async def main(values: int, devices: int, scrapes: int) -> dict[str, Any]:
    rng = random.Random(7)
    metrics = filled(values, devices, rng)
    counts = prometheus.DeviceCounts(planned=devices, started=devices, running=devices)
    collector = prometheus.RunCollector(metrics, lambda: counts)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    body = generate_latest(registry)

    def cold() -> None:
        for name in ENDPOINTS:  # every device histogram moved: read again in full
            metrics.observe(
                Exchange(name=name, intended=0, started=0, duration=0.02, status=200, error=None)
            )
        metrics.record_send_lag(0.0005)
        generate_latest(registry)

    info = {"scenario": "bench"}
    async with (
        prometheus.serve("127.0.0.1", 0, info=info) as exporter,
        aiohttp.ClientSession() as http,
    ):
        exporter.attach(collector)
        start = time.perf_counter()
        async with http.get(exporter.url) as answer:
            await answer.read()
        round_trip_ms = (time.perf_counter() - start) * 1000
    histogram = metrics.readings().endpoints["checkin"].histogram
    return {
        "bench": "sim_scrape",
        "recorded_values": values,
        "devices_per_profile": devices,
        "endpoints": len(ENDPOINTS) + len(ADMIN),
        "checkin_max_latency_ms": figures.percentile_ms(histogram, 100.0),
        "exposition_bytes": len(body),
        "cold_scrape": timed_ms(cold, scrapes),
        "warm_scrape": timed_ms(lambda: generate_latest(registry), scrapes),
        "one_scrape_over_loopback_ms": round(round_trip_ms, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--scrapes", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.values, args.devices, args.scrapes)), indent=2))
