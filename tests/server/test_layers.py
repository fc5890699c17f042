"""Server layering (STYLE §1, §6, §8): SQL only in server/store, so handlers never import sqlite3;
a context module that reaches no other server module at run time; a docstring atop every
long-lived service. The import rules of the whole project are in tests/test_imports.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_imports import ROOT, imported_modules, modules_of

SERVER = ROOT / "server"


def run_time_imports(path: Path) -> set[str]:
    """Modules `path` imports at run time: those under `if TYPE_CHECKING:` do not count."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("path", modules_of("server", "handlers"), ids=lambda p: p.name)
def test_handlers_do_not_import_sqlite3(path: Path) -> None:
    """Handlers call store transactions and domain functions; they never see a connection."""
    assert "sqlite3" not in imported_modules(path), f"{path.relative_to(ROOT)} imports sqlite3"


def test_only_the_store_speaks_sql() -> None:
    """Outside server/store no module imports sqlite3 (services and start-up included)."""
    speaking = [
        str(path.relative_to(ROOT))
        for path in modules_of("server")
        if "store" not in path.relative_to(SERVER).parts and "sqlite3" in imported_modules(path)
    ]
    assert speaking == []


def test_the_context_reaches_no_server_module_at_run_time() -> None:
    """server/context.py is a typed container: what it names is imported for the type checker
    only, so importing it pulls in no service, store or handler."""
    found = {m for m in run_time_imports(SERVER / "context.py") if m.split(".")[0] == "server"}
    assert found == set()


@pytest.mark.parametrize("path", modules_of("server", "services"), ids=lambda p: p.name)
def test_every_service_says_what_it_is(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{path.relative_to(ROOT)} has no module docstring"


def test_the_run_time_check_sees_through_type_checking(tmp_path: Path) -> None:
    """The checker skips `if TYPE_CHECKING:` imports but sees every other one (no silent pass)."""
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from server.hub import Hub\n"
        "else:\n    import json\n\ndef f():\n    import server.store\n"
    )
    assert run_time_imports(module) == {"typing", "json", "server.store"}
