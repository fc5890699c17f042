"""Inventory scan speed on 200 generated APKs: cold scan, warm rescan, rescan after a restart,
and `aapt dump badging` per APK as the baseline in the same run; agent RSS after the cold scan.

    python -m bench.inventory [--apks 200] [--strings 200]

Needs Debian's `aapt` and `android-framework-res` (the APKs are generated with aapt, and aapt
is the baseline). The APKs are unsigned (signing 200 APKs with apksigner takes minutes of JVM
start-up); their resource tables hold `--strings` strings so label resolution has work to do.
Targets (issue 5): warm rescan under 50 ms, cold scan faster than the aapt baseline (run here
with 2 parallel workers, like the scan; the one-at-a-time figure is printed too), agent RSS
after a cold scan under 120 MB (the parsing workers are separate processes).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import emit

FRAMEWORK = Path("/usr/share/android-framework-res/framework-res.apk")


def generate(folder: Path, count: int, strings: int) -> list[Path]:
    work = folder / "src"
    out = folder / "apks"
    out.mkdir(parents=True)

    def build(i: int) -> Path:
        src = work / f"app{i:03d}"
        (src / "res" / "values").mkdir(parents=True)
        extra = "".join(
            f'<string name="s{j}">String {j} of app {i}</string>' for j in range(strings)
        )
        (src / "res" / "values" / "strings.xml").write_text(
            f'<?xml version="1.0" encoding="utf-8"?><resources>'
            f'<string name="app_name">Bench App {i}</string>{extra}</resources>'
        )
        (src / "AndroidManifest.xml").write_text(
            '<?xml version="1.0" encoding="utf-8"?>'
            '<manifest xmlns:android="http://schemas.android.com/apk/res/android" '
            f'package="com.bench.app{i:03d}" android:versionCode="{i + 1}" '
            f'android:versionName="1.{i}"><uses-sdk android:minSdkVersion="21" '
            'android:targetSdkVersion="30" /><application android:hasCode="false" '
            'android:label="@string/app_name" /></manifest>'
        )
        target = out / f"app{i:03d}.apk"
        subprocess.run(
            [
                "aapt",
                "package",
                "-f",
                "-M",
                str(src / "AndroidManifest.xml"),
                "-S",
                str(src / "res"),
                "-I",
                str(FRAMEWORK),
                "-F",
                str(target),
            ],
            check=True,
            capture_output=True,
        )
        return target

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(build, range(count)))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def aapt_baseline(apks: list[Path], workers: int) -> float:
    def badging(path: Path) -> str:
        return subprocess.run(
            ["aapt", "dump", "badging", str(path)], check=True, capture_output=True, text=True
        ).stdout

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        outputs = list(pool.map(badging, apks))
    assert all("package: name=" in o for o in outputs)
    return time.perf_counter() - started


async def run(count: int, strings: int) -> dict[str, Any]:
    from agent.apk.inventory import CACHE_FILE, InventoryScanner

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        apks = generate(folder, count, strings)
        cache = folder / CACHE_FILE
        rss_before = rss_mb()
        started = time.perf_counter()
        scanner = InventoryScanner(folder / "apks", cache)
        cold = await scanner.scan()
        cold_s = time.perf_counter() - started
        rss_after_cold = rss_mb()
        warm_times = []
        for _ in range(5):
            started = time.perf_counter()
            warm = await scanner.scan()
            warm_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        restarted = await InventoryScanner(folder / "apks", cache).scan()
        restart_s = time.perf_counter() - started
        workers = 2
        baseline_s = aapt_baseline(apks, workers)
        sequential_s = aapt_baseline(apks, 1)
        assert len(cold.apps) == len(warm.apps) == len(restarted.apps) == count
        assert warm.parsed == 0 and restarted.parsed == 0
        warm_ms = round(min(warm_times) * 1000, 2)
        return {
            "bench": "inventory",
            "apks": count,
            "strings_per_apk": strings,
            "cold_scan_s": round(cold_s, 3),
            "warm_rescan_ms": warm_ms,
            "warm_rescan_ms_median": round(sorted(warm_times)[2] * 1000, 2),
            "rescan_after_restart_ms": round(restart_s * 1000, 2),
            "aapt_badging_baseline_s": round(baseline_s, 3),
            "aapt_parallel_workers": workers,
            "aapt_badging_sequential_s": round(sequential_s, 3),
            "cold_ratio_to_aapt_sequential": round(cold_s / sequential_s, 3),
            "cold_ratio_to_aapt": round(cold_s / baseline_s, 3),
            "agent_rss_mb_before": rss_before,
            "agent_rss_mb_after_cold_scan": rss_after_cold,
            "targets": {
                "warm_rescan_under_50ms": warm_ms < 50,
                "cold_faster_than_aapt": cold_s < baseline_s,
                "rss_under_120mb": rss_after_cold < 120,
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apks", type=int, default=200)
    parser.add_argument("--strings", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("aapt") is None or not FRAMEWORK.exists():
        sys.stderr.write(
            "bench.inventory: needs `aapt` and android-framework-res "
            "(apt-get install aapt android-framework-res)\n"
        )
        sys.exit(2)
    emit(asyncio.run(run(args.apks, args.strings)))


if __name__ == "__main__":
    main()
