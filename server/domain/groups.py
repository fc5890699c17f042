"""Group trees: cycle detection for a new parent, and a group's descendants (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def creates_cycle(group: str, new_parent: str | None, parent_of: Mapping[str, str | None]) -> bool:
    """True when making `new_parent` the parent of `group` would close a loop."""
    seen: set[str] = set()
    current = new_parent
    while current is not None:
        if current == group or current in seen:
            return True
        seen.add(current)
        current = parent_of.get(current)
    return False


def with_descendants(roots: Iterable[str], parent_of: Mapping[str, str | None]) -> set[str]:
    """The roots and every group below them."""
    children: dict[str, list[str]] = {}
    for child, parent in parent_of.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    found: set[str] = set()
    stack = [root for root in roots if root in parent_of]
    while stack:
        group = stack.pop()
        if group in found:
            continue
        found.add(group)
        stack.extend(children.get(group, ()))
    return found
