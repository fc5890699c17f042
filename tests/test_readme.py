"""The README's quick try works as typed, right after the set-up command.

The two marked shell blocks are taken from README.md and run with bash in an empty folder (with
the project's virtual environment linked in as `.venv`, as after the set-up command); only the
port is changed, to a free one, so that the test never collides with a server of the user's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```sh\n(.*?)```", text, re.S)
    assert match, f"README.md has no ```sh block after <!-- {marker} -->"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.skipif(shutil.which("curl") is None, reason="the quick try uses curl")
def test_quick_try_works_as_typed(tmp_path: Path) -> None:
    """Server block, then client block: login succeeds and the device list is an empty page."""
    (tmp_path / ".venv").symlink_to(sys.prefix)
    port = _free_port()
    server_block = _block("quick-try-server").replace(
        "midm-server --db", f"exec midm-server --port {port} --db"
    )
    client_block = _block("quick-try-client").replace("localhost:8080", f"localhost:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDM_")}
    server = subprocess.Popen(
        ["bash", "-c", server_block], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "server.listening" in line:
                break
        else:
            pytest.fail(f"the quick-try server exited with {server.wait()} before listening")
        client = subprocess.run(
            ["bash", "-c", client_block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        assert "Traceback" not in client.stderr
        reply = json.loads(client.stdout)
        assert reply["code"] == 0, reply
        assert reply["data"] == [] and reply["totalSize"] == 0, reply
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert (tmp_path / "quick-try.sqlite").exists()


def test_the_scenario_schema_in_the_readme_is_a_valid_scenario() -> None:
    """The README's "Writing a scenario" block parses as a scenario (the schema cannot go stale)."""
    from simulator.scenario import parse

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Writing a scenario") :]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "no ```toml block under 'Writing a scenario'"
    scenario = parse(match.group(1).encode(), file="README.md")
    assert scenario is not None
