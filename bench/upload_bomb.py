"""Zip bombs against the upload parser: its peak RSS and the time to reject (issue 12, item 2).

    python bench/upload_bomb.py [--inflated-mib 1024]

The bombs are the issue's: an APK whose AndroidManifest.xml inflates to 1 GiB (zip64, its size
declared, as the issue's command makes it), an OTA zip whose META-INF/com/android/metadata
declares 40 bytes and inflates to 1 GiB, and each entry the other way round (declared / lying).
Each is ~1 MB on disk, built in a temp folder.
The server runs in this process (a temp SQLite file) with its own parser worker process, whose
peak RSS is read from /proc/<pid>/status (VmHWM, reset before each upload through clear_refs);
a normal upload of another site is sent while each bomb is parsed, to show that it does not
queue behind the bomb for long. Targets: peak RSS < 256 MB, reject < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import PASSWORD, emit
from midm_common.logsetup import configure_logging
from server.app import create_app
from server.bootstrap import create_site
from server.clock import SystemClock
from server.config import SeedSite, ServerConfig
from server.context import SERVICES
from server.store.db import Database

APK = Path(__file__).parent.parent / "tests" / "fixtures" / "apks" / "basic-v1.apk"
OTHER_APK = APK.with_name("basic-v2.apk")
MIB = 1 << 20
METADATA = "META-INF/com/android/metadata"


def declared_bomb(path: Path, name: str, mib: int) -> None:
    """The issue's command: `name` of `mib` MiB of zeros, zip64, its size declared."""
    archive = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
    with archive, archive.open(name, "w", force_zip64=True) as entry:
        block = bytes(MIB)
        for _ in range(mib):
            entry.write(block)


def zeros_stream(mib: int) -> bytes:
    """`mib` MiB of zeros as a raw deflate stream (~1 KB a MiB)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = bytes(MIB)
    return b"".join([compressor.compress(block) for _ in range(mib)] + [compressor.flush()])


def lying_bomb(path: Path, entry_name: str, data: bytes) -> None:
    """One deflated entry whose headers say 40 bytes, whatever `data` inflates to."""
    name = entry_name.encode()
    local = struct.pack(
        "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, 0, len(data), 40, len(name), 0
    )
    central = struct.pack(
        "<4sHHHHHHIIIHHHHHII",
        b"PK\x01\x02",
        20,
        20,
        0,
        8,
        0,
        0,
        0,
        len(data),
        40,
        len(name),
        0,
        0,
        0,
        0,
        0,
        0,
    )
    body = local + name + data
    directory = central + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(body), 0)
    path.write_bytes(body + directory + end)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Admin:
    def __init__(self, http: aiohttp.ClientSession, base: str, key: str, token: str) -> None:
        self.http, self.base = http, base
        self.headers = {"X-API-Key": key, "Authorization": f"Bearer {token}"}

    async def upload(self, path: str, content: bytes, name: str) -> tuple[int, dict[str, Any]]:
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(content), filename=name)
        async with self.http.post(self.base + path, data=form, headers=self.headers) as r:
            return r.status, await r.json()


async def admin_of(
    http: aiohttp.ClientSession, base: str, key: str, email: str, password: str
) -> Admin:
    async with http.post(
        f"{base}/portal/V1/auth", json={"email": email, "password": password}
    ) as r:
        token = (await r.json())["data"]["access_token"]
    return Admin(http, base, key, token)


async def measure(
    attacker: Admin, bystander: Admin, pid: int, path: str, content: bytes, name: str
) -> dict[str, Any]:
    """Upload `content`; meanwhile another site uploads a normal APK."""
    reset = reset_peak(pid)

    async def normal() -> float:
        started = time.perf_counter()
        status, _ = await bystander.upload("/ota/api/app/upload", OTHER_APK.read_bytes(), "n.apk")
        assert status == 200
        return time.perf_counter() - started

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        bomb = group.create_task(attacker.upload(path, content, name))
        other = group.create_task(normal())
    status, body = bomb.result()
    return {
        "file_bytes": len(content),
        "status": status,
        "code": body.get("code"),
        "message": body.get("message"),
        "reject_s": round(time.perf_counter() - started, 3),
        "parser_peak_rss_mb": peak_rss_mb(pid),
        "peak_reset": reset,
        "concurrent_normal_upload_s": round(other.result(), 3),
    }


async def run(mib: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        built = time.perf_counter()
        apps, otas = "/ota/api/app/upload", "/ota/api/ota/upload"
        bombs = {
            "apk_manifest_declared": (tmp / "b.apk", "AndroidManifest.xml", apps),
            "apk_manifest_lying": (tmp / "lie.apk", "AndroidManifest.xml", apps),
            "ota_metadata_declared": (tmp / "big.zip", METADATA, otas),
            "ota_metadata_lying": (tmp / "lie.zip", METADATA, otas),
        }
        zeros = zeros_stream(mib)
        for file, entry, _ in bombs.values():
            if file.name.startswith("lie"):
                lying_bomb(file, entry, zeros)
            else:
                declared_bomb(file, entry, mib)
        build_s = time.perf_counter() - built
        config = ServerConfig.for_db(tmp / "bench.sqlite", port=0)
        db = Database(config.db_path)
        db.migrate()
        seeds = [
            SeedSite(name=n, api_key=f"key-{n}", admin_email=f"a@{n}.test", admin_password=PASSWORD)
            for n in ("attacker", "bystander")
        ]
        for seed in seeds:
            create_site(db, seed, SystemClock(), password_cost=2**4)
        db.close()
        app = create_app(config)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as http:
                attacker, bystander = [
                    await admin_of(http, base, f"key-{s.name}", f"a@{s.name}.test", PASSWORD)
                    for s in seeds
                ]
                started = time.perf_counter()
                status, _ = await attacker.upload("/ota/api/app/upload", APK.read_bytes(), "ok.apk")
                warm_s = time.perf_counter() - started
                assert status == 200
                pid = app[SERVICES].upload_parsers.worker_pid
                assert pid is not None
                result: dict[str, Any] = {
                    "inflated_mib": mib,
                    "bombs_built_s": round(build_s, 1),
                    "normal_apk": {
                        "first_upload_s": round(warm_s, 3),
                        "parser_peak_rss_mb": peak_rss_mb(pid),
                    },
                }
                for label, (file, _, path) in bombs.items():
                    result[label] = await measure(
                        attacker, bystander, pid, path, file.read_bytes(), file.name
                    )
                result["targets"] = {"parser_peak_rss_mb": 256, "reject_s": 1.0}
                result["met"] = all(
                    result[k]["code"] == 40001
                    and result[k]["parser_peak_rss_mb"] < 256
                    and result[k]["reject_s"] < 1.0
                    for k in bombs
                )
                return result
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflated-mib", type=int, default=1024)
    args = parser.parse_args()
    configure_logging("warning", stream=sys.stderr)  # stdout is the JSON
    emit(asyncio.run(run(args.inflated_mib)))


if __name__ == "__main__":
    main()
