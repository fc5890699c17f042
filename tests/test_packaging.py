"""Packaging keeps installing: what the code imports is declared, and the build stays warning-free.

A fresh machine installs only what pyproject.toml declares, so a module imported by the library
but reached only as somebody else's dependency can vanish in a later release; the test tools are
pinned so that the test command gives the same verdict next month; the licence is an SPDX string
(setuptools stops accepting the TOML table form in 2027).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OWN = {"agent", "server", "simulator", "midm_common", "tests", "bench"}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _imports(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - OWN - set(sys.stdlib_module_names) - {"__future__"}


def test_every_library_import_is_a_declared_dependency() -> None:
    """agent/, server/, simulator/ and midm_common/ import only what `dependencies` declares."""
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    providers = packages_distributions()
    imported: set[str] = set()
    for package in ("agent", "server", "simulator", "midm_common"):
        imported |= _imports(ROOT / package)
    undeclared = {
        module
        for module in imported
        if not {_name(d) for d in providers.get(module, [module])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"


def test_test_tools_are_pinned_and_androguard_bounded_to_a_minor() -> None:
    """ruff and mypy are pinned exactly; androguard (whose internals we patch) to one minor."""
    test_extra = {_name(r): r for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    for tool in ("ruff", "mypy"):
        assert re.search(r"==\d+\.\d+\.\d+$", test_extra[tool].strip()), test_extra[tool]
    androguard = next(r for r in PYPROJECT["project"]["dependencies"] if _name(r) == "androguard")
    assert re.search(r"<\d+\.\d+(,|$)", androguard.replace(" ", "")), androguard
    assert "pytest-timeout" in test_extra


def test_licence_is_an_spdx_string_with_its_file() -> None:
    """`project.license` is an SPDX expression and the licence text ships with the package."""
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    for name in PYPROJECT["project"]["license-files"]:
        assert "Apache License" in (ROOT / name).read_text()
