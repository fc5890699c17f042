"""Whole-file OTA signature verification of a 100 MB package vs sha256 of the same file.

    python -m bench.ota_verify [--mb 100] [--repeat 3] [--kind rsa|ec]

Generates an OTA-shaped zip (metadata + a stored payload.bin of random bytes) in a temporary
folder, signs it as `signapk -w` does (tests/ota_signing.py: RSA-2048 or P-256, SHA-256, no
signed attributes), then, in a fresh child process (so the generator's memory is not counted):
sha256 of the whole file (the baseline: what the agent's download check already costs), the
signature check alone (midm_common.ota_signature.read_signature) and the one OTA reader with it
(read_ota_metadata: what the server's upload parser and the agent run), each `--repeat` times
(the file is in the page cache after the first read). Peak RSS of the child (VmHWM) and its
RSS before verifying. The folder is deleted afterwards. Prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def generate(path: Path, megabytes: int, kind: str) -> None:
    from tests.ota_signing import cms_block, signed_part, signer

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "META-INF/com/android/metadata",
            "ota-type=AB\npre-device=bench\npost-build=bench/b/b:14/B/2:user/release-keys\n",
        )
        with archive.open("payload.bin", "w", force_zip64=True) as payload:
            for _ in range(megabytes):
                payload.write(os.urandom(CHUNK))
    data = signed_part(path.read_bytes())
    block = cms_block(data, signer("bench", kind))
    from tests.ota_signing import assemble

    path.write_bytes(assemble(data, block))


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MB (/proc: ru_maxrss would carry the
    parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def measure(path: Path, repeat: int) -> dict[str, Any]:
    """In the child: sha256, read_signature and read_ota_metadata of `path`, timed."""
    from midm_common.ota import read_ota_metadata
    from midm_common.ota_signature import SignatureStatus, read_signature

    def sha256() -> None:  # the baseline: the stdlib's streaming file hash
        with path.open("rb") as handle:
            hashlib.file_digest(handle, "sha256")

    def signature() -> None:
        with path.open("rb") as handle:
            result = read_signature(handle, path.stat().st_size)
        assert result.status is SignatureStatus.VALID, result.reason

    def reader() -> None:
        assert read_ota_metadata(path).signature.status is SignatureStatus.VALID

    sha256()  # the page cache holds the file from here on
    import cryptography.hazmat.primitives.asymmetric.rsa  # noqa: F401 - imported before the RSS

    before = status_mb("VmRSS")
    times: dict[str, list[float]] = {"sha256": [], "read_signature": [], "read_ota_metadata": []}
    for _ in range(repeat):
        runs = (("sha256", sha256), ("read_signature", signature), ("read_ota_metadata", reader))
        for name, run in runs:
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    peak = status_mb("VmHWM")
    result: dict[str, Any] = {f"{k}_s": round(statistics.median(v), 3) for k, v in times.items()}
    result.update(
        {
            "min_s": {k: round(min(v), 3) for k, v in times.items()},
            "verify_over_sha256": round(
                statistics.median(times["read_signature"]) / statistics.median(times["sha256"]), 2
            ),
            "rss_before_mb": before,
            "peak_rss_mb": peak,
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kind", choices=("rsa", "ec"), default="rsa")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        sys.stdout.write(json.dumps(measure(args.child, args.repeat)) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="midm-ota-bench-") as folder:
        path = Path(folder) / "signed-ota.zip"
        started = time.perf_counter()
        generate(path, args.mb, args.kind)
        generated_s = time.perf_counter() - started
        child = subprocess.run(
            [sys.executable, "-m", "bench.ota_verify", "--child", str(path), "--repeat",
             str(args.repeat)],
            capture_output=True, check=True, text=True,
        )  # fmt: skip
        emit(
            {
                "package_mb": round(path.stat().st_size / (1 << 20), 1),
                "signature": f"{args.kind}, sha256, no signed attributes (signapk -w)",
                "repeat": args.repeat,
                "generate_s": round(generated_s, 2),
                **json.loads(child.stdout),
            }
        )


if __name__ == "__main__":
    main()
