"""Decisions stay pure: server/domain imports no I/O module (STYLE §1), androguard stays lazy."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
IO_MODULES = {"asyncio", "aiohttp", "sqlite3", "androguard", "os", "socket", "structlog", "pathlib"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_domain_modules_do_no_io() -> None:
    """No module of server/domain imports asyncio, aiohttp, sqlite3, os, socket or androguard."""
    for path in sorted((ROOT / "server" / "domain").glob("*.py")):
        assert not imported_modules(path) & IO_MODULES, path.name


def test_androguard_is_imported_lazily() -> None:
    """No module imports androguard at top level; only inside the parsing function."""
    for path in sorted(ROOT.glob("*/**/*.py")):
        if ".venv" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                assert not any(n.startswith(("androguard", "loguru")) for n in names), path
