"""The store's writer under a burst: N device inventories written at once (a fleet reporting
after a rollout), one transaction per write against group commit (server.store.db), in one run.

    python -m bench.store_writes [--writes 2000] [--apps 150] [--group 256]

Each write is the server's own `save_inventory` (an upsert of the inventory row and the device's
hash) on a real SQLite file in a temp dir, WAL and synchronous=FULL as the server runs it; all N
are queued at once from one event loop, as N requests would. Baseline in the same command: the
same burst with a write group of 1 (each write its own BEGIN ... COMMIT and fsync, the writer as
it was before group commit). Figures: wall time, writes/s, and each write's latency from queued
to answered (p50/p99/max), for both, and their ratio. The burst is bounded by --writes.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import Timing, emit
from server.limits import WRITE_GROUP
from server.store.agent import save_inventory
from server.store.db import Database, writes


@writes
def _devices(conn: Any, uuids: list[str]) -> None:
    conn.execute("INSERT INTO sites (uuid, name, created) VALUES ('s', 's', 0)")
    conn.executemany(
        "INSERT INTO devices (uuid, site_uuid, serial_no, enabled, created, updated) "
        "VALUES (?, 's', ?, 1, 0, 0)",
        [(u, f"S{i:06d}") for i, u in enumerate(uuids)],
    )


def _apps(count: int) -> list[dict[str, Any]]:
    return [
        {
            "packageName": f"com.example.app{i}",
            "versionCode": 100 + i,
            "versionName": f"1.{i}",
            "label": f"App {i}",
            "certMd5": "ac62580a" * 4,
        }
        for i in range(count)
    ]


async def burst(folder: Path, *, writes: int, apps: int, group: int) -> dict[str, Any]:
    db = Database(folder / f"group-{group}.sqlite", write_group=group)
    db.migrate()
    try:
        uuids = [str(uuid.uuid4()) for _ in range(writes)]
        await _devices(db, uuids)
        inventory = _apps(apps)
        latencies: list[float] = []

        async def one(device: str) -> None:
            queued = time.perf_counter()
            await save_inventory(db, device, "user", inventory, "h", 0)
            latencies.append((time.perf_counter() - queued) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(one(u) for u in uuids))
        wall = time.perf_counter() - started
    finally:
        db.close()
    summary = Timing(f"group-{group}", latencies, wall, 0).summary()
    summary.pop("errors")
    return {
        "group": group,
        "wall_s": round(wall, 3),
        "writes_per_s": summary.pop("rps"),
        **summary,
        "max_ms": round(max(latencies), 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--apps", type=int, default=150)
    parser.add_argument("--group", type=int, default=WRITE_GROUP)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        one_each = await burst(Path(tmp), writes=args.writes, apps=args.apps, group=1)
        grouped = await burst(Path(tmp), writes=args.writes, apps=args.apps, group=args.group)
    emit(
        {
            "bench": "store_writes",
            "writes": args.writes,
            "apps_per_inventory": args.apps,
            "one_transaction_each": one_each,
            "group_commit": grouped,
            "speedup_wall": round(one_each["wall_s"] / grouped["wall_s"], 2),
            "p99_ratio": round(grouped["p99_ms"] / one_each["p99_ms"], 3),
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
