"""Import rules (STYLE §1, §7b): the sides stay apart, decisions stay pure, androguard stays lazy.

- agent/ never imports server/, server/ never imports agent/, and neither imports simulator/;
  midm_common/ (what both share: format readers, logging set-up) imports none of the three;
  the simulator talks to a server over HTTP only, so it never imports server/ either.
- Pure modules (agent/core, server/domain, simulator/plan) import no I/O at all; the format
  readers read the file they are given but import no event loop, network, database or logging.
- androguard (and its loguru) are imported only inside the function that parses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NO_IO = {
    "asyncio", "aiohttp", "sqlite3", "androguard", "os", "socket", "structlog", "pathlib",
    "subprocess", "threading", "multiprocessing", "concurrent", "time",
}  # fmt: skip
READERS_NO_IO = {"asyncio", "aiohttp", "sqlite3", "socket", "structlog", "subprocess"}
FORBIDDEN = {
    "agent": {"server", "simulator"},
    "server": {"agent", "simulator"},
    "midm_common": {"agent", "server", "simulator"},
    "simulator": {"server"},
}


def imported_modules(path: Path, *, top_level_only: bool = False) -> set[str]:
    """First components of every module `path` imports (relative imports excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def modules_of(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_side_imports_the_other(package: str) -> None:
    """Each package imports only what its layer may: checked on every import, lazy ones too."""
    for path in modules_of(package):
        crossed = imported_modules(path) & FORBIDDEN[package]
        assert not crossed, f"{path.relative_to(ROOT)} imports {sorted(crossed)}"


@pytest.mark.parametrize("folder", [("agent", "core"), ("server", "domain"), ("simulator", "plan")])
def test_pure_modules_do_no_io(folder: tuple[str, ...]) -> None:
    """Decisions import no event loop, network, database, file system, clock or logging."""
    for path in modules_of(*folder):
        found = imported_modules(path) & NO_IO
        assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}"


def test_format_readers_import_no_event_loop_network_or_database() -> None:
    """midm_common's readers parse the bytes of a file and nothing more."""
    readers = ("apk.py", "apk_signature.py", "apk_v1.py", "arsc.py", "der.py", "ota.py")
    for name in (*readers, "ota_signature.py", "zipguard.py", "errors.py"):
        path = ROOT / "midm_common" / name
        found = imported_modules(path) & READERS_NO_IO
        assert not found, f"midm_common/{name} imports {sorted(found)}"


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The checker itself finds a lazy cross import and an I/O import (no silent pass)."""
    module = tmp_path / "m.py"
    module.write_text(
        "import json\n\ndef f():\n    from server.store import db\n    import asyncio\n"
    )
    assert imported_modules(module) == {"json", "server", "asyncio"}
    assert imported_modules(module, top_level_only=True) == {"json"}


def test_androguard_is_imported_lazily() -> None:
    """No module imports androguard or loguru at top level; only inside the parsing function."""
    for path in sorted(ROOT.glob("*/**/*.py")):
        if ".venv" in path.parts:
            continue
        lazy_only = imported_modules(path, top_level_only=True) & {"androguard", "loguru"}
        assert not lazy_only, path
