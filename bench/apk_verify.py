"""APK signature verification (v1 + v2 + v3) of an 18 MB APK vs sha256 of the same file.

    python -m bench.apk_verify [--mb 18] [--repeat 3] [--signer auto|apksigner|python]

Builds an APK in a temporary folder: a committed fixture's manifest and resource table, 1,000
small deflated files (as a real app's resources) and a stored asset of random bytes up to
`--mb`; signs it v1+v2+v3 with Debian's `apksigner` (a key and certificate made here with
`cryptography`) when installed, else with the tests' own signer (tests/apksigning.py). Then, in
a fresh child process (so the generator's memory is not counted): sha256 of the whole file (the
baseline: what any upload already costs), verify_apk alone (midm_common.apk_signature), and the
server's whole upload parse (read_apk_metadata with verify_signatures: androguard + verify),
each `--repeat` times (the page cache holds the file after the first read); the child's RSS
before verifying and its peak RSS (VmHWM). `apksigner verify` once, when installed, as the
independent verifier's time (a JVM start included). The folder is deleted afterwards. JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from bench.common import emit

CHUNK = 1 << 20
SMALL_FILES = 1000  # deflated res/ entries: a v1 manifest section and an inflate each


def unsigned_apk(path: Path, megabytes: int) -> None:
    from tests.apksigning import base_entries

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in base_entries().items():
            method = zipfile.ZIP_STORED if name == "resources.arsc" else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
        for i in range(SMALL_FILES):
            text = f"<vector id='{i}'>" + "<path d='M0,0 L24,24'/>" * 150 + "</vector>"
            archive.writestr(f"res/drawable/icon_{i}.xml", text, zipfile.ZIP_DEFLATED)
        left = megabytes * CHUNK - SMALL_FILES * 400  # the small files take ~400 bytes each
        with archive.open(zipfile.ZipInfo("assets/big.bin"), "w") as asset:
            while left > 0:
                asset.write(os.urandom(min(CHUNK, left)))
                left -= CHUNK


def sign_apksigner(folder: Path, unsigned: Path, out: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from tests.apksigning import identity

    who = identity("rsa", "bench")
    key = folder / "key.pk8"
    cert = folder / "cert.der"
    key.write_bytes(
        who.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(who.cert_der)
    subprocess.run(
        ["apksigner", "sign", "--key", str(key), "--cert", str(cert), "--min-sdk-version", "21",
         "--out", str(out), str(unsigned)],
        check=True, capture_output=True,
    )  # fmt: skip


def sign_python(unsigned: Path, out: Path) -> None:
    from tests.apksigning import V2, V3, BlockSigner, build_zip, identity, v1_sign, v2v3_sign

    who = identity("rsa", "bench")
    with zipfile.ZipFile(unsigned) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    stored = ("resources.arsc", "assets/big.bin")
    signed = build_zip(v1_sign(entries, who, apk_signed="2, 3"), stored=stored)
    out.write_bytes(v2v3_sign(signed, {V3: [BlockSigner(who)], V2: [BlockSigner(who)]}))


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def measure(path: Path, repeat: int) -> dict[str, Any]:
    """In the child: sha256, verify_apk and the upload parse of `path`, timed."""
    from midm_common.apk import read_apk_metadata
    from midm_common.apk_signature import verify_apk

    size = path.stat().st_size
    schemes: list[str] = []

    def sha256() -> None:  # the baseline: the stdlib's streaming file hash
        with path.open("rb") as handle:
            hashlib.file_digest(handle, "sha256")

    def verify() -> None:
        with path.open("rb") as handle:
            verified = verify_apk(handle, size, archive=path.name)
        schemes[:] = [str(s) for s in verified.schemes]

    def upload_parse() -> None:
        assert read_apk_metadata(path, verify_signatures=True).cert_md5

    sha256()  # the page cache holds the file from here on
    verify()  # imports done before the RSS is read
    before = status_mb("VmRSS")
    times: dict[str, list[float]] = {"sha256": [], "verify_apk": []}
    for _ in range(repeat):
        for name, run in (("sha256", sha256), ("verify_apk", verify)):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    peak_verify = status_mb("VmHWM")
    times["upload_parse"] = []
    for _ in range(repeat):
        started = time.perf_counter()
        upload_parse()
        times["upload_parse"].append(time.perf_counter() - started)
    result: dict[str, Any] = {f"{k}_s": round(statistics.median(v), 3) for k, v in times.items()}
    result.update(
        {
            "min_s": {k: round(min(v), 3) for k, v in times.items()},
            "verified_schemes": schemes,
            "verify_over_sha256": round(
                statistics.median(times["verify_apk"]) / statistics.median(times["sha256"]), 2
            ),
            "rss_before_mb": before,
            "peak_rss_verify_mb": peak_verify,
            "peak_rss_upload_parse_mb": status_mb("VmHWM"),
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=18)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--signer", choices=("auto", "apksigner", "python"), default="auto")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        sys.stdout.write(json.dumps(measure(args.child, args.repeat)) + "\n")
        return
    have_apksigner = shutil.which("apksigner") is not None
    signer = args.signer if args.signer != "auto" else ("apksigner" if have_apksigner else "python")
    with tempfile.TemporaryDirectory(prefix="midm-apk-bench-") as name:
        folder = Path(name)
        unsigned, path = folder / "unsigned.apk", folder / "signed.apk"
        started = time.perf_counter()
        unsigned_apk(unsigned, args.mb)
        if signer == "apksigner":
            sign_apksigner(folder, unsigned, path)
        else:
            sign_python(unsigned, path)
        generated_s = time.perf_counter() - started
        child = subprocess.run(
            [sys.executable, "-m", "bench.apk_verify", "--child", str(path), "--repeat",
             str(args.repeat)],
            capture_output=True, check=True, text=True,
        )  # fmt: skip
        independent: dict[str, Any] = {"apksigner_verify_s": None}
        if have_apksigner:
            started = time.perf_counter()
            run = subprocess.run(
                ["apksigner", "verify", str(path)], capture_output=True, text=True, check=False
            )
            independent = {
                "apksigner_verify_s": round(time.perf_counter() - started, 3),
                "apksigner_verifies": run.returncode == 0,
            }
        with zipfile.ZipFile(path) as archive:
            entries = len(archive.namelist())
        emit(
            {
                "apk_mb": round(path.stat().st_size / (1 << 20), 1),
                "entries": entries,
                "signer": f"{signer}, RSA-2048, v1 (SHA-256) + v2 + v3",
                "repeat": args.repeat,
                "generate_s": round(generated_s, 2),
                **json.loads(child.stdout),
                **independent,
            }
        )


if __name__ == "__main__":
    main()
