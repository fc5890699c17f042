"""App inventories, pure: when the server asks for one, the hash it keeps, an app's status."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.inventory import (
    AppStatus,
    InstallEvent,
    app_status,
    inventory_wanted,
    stored_hash,
)


@pytest.mark.parametrize(
    ("stored", "reported", "wanted"),
    [
        (None, None, True),  # nothing stored yet
        (None, "h1", True),
        ("h1", None, False),  # the check-in names no hash: nothing to compare
        ("h1", "h1", False),
        ("h1", "h2", True),
        ("", "h1", True),  # stored without a hash: the first hashed check-in asks again
        ("", None, False),
    ],
)
def test_inventory_wanted(stored: str | None, reported: str | None, wanted: bool) -> None:
    """inventoryWanted: until an inventory is stored, and whenever the reported hash differs."""
    assert inventory_wanted(stored_hash=stored, reported_hash=reported) is wanted


@pytest.mark.parametrize(
    ("given_hash", "last_reported", "kept"),
    [("h2", "h1", "h2"), (None, "h1", "h1"), (None, None, ""), ("", "h1", "h1")],
)
def test_stored_hash(given_hash: str | None, last_reported: str | None, kept: str) -> None:
    """The PUT's inventoryHash wins, else the previous check-in's, else ""."""
    assert stored_hash(given=given_hash, last_reported=last_reported) == kept


HASHES = st.one_of(st.none(), st.text(max_size=8))


@given(HASHES, st.booleans(), st.text(max_size=8))
def test_a_stored_inventory_is_asked_for_again_only_when_it_changes(
    reported: str | None, put_names_it: bool, later: str
) -> None:
    """Once the inventory a check-in announced is stored (the PUT naming that hash or none),
    check-ins with that hash want nothing; a check-in with any other hash wants it again."""
    kept = stored_hash(given=reported if put_names_it else None, last_reported=reported)
    assert not inventory_wanted(stored_hash=kept, reported_hash=reported)
    assert inventory_wanted(stored_hash=kept, reported_hash=later) is (later != kept)


@given(HASHES)
def test_nothing_stored_always_wants(reported: str | None) -> None:
    assert inventory_wanted(stored_hash=None, reported_hash=reported)


INSTALLED_5 = InstallEvent(version_code=5, installed=True)
FAILED = InstallEvent(version_code=None, installed=False)
INVENTORY = [{"packageName": "a.b", "versionCode": 3}, {"packageName": "c.d", "versionCode": None}]


@pytest.mark.parametrize(
    ("package", "event", "inventory", "expected"),
    [
        ("a.b", INSTALLED_5, INVENTORY, AppStatus(version_code=5, installed=True)),
        ("a.b", FAILED, INVENTORY, AppStatus(version_code=None, installed=False)),
        ("a.b", None, INVENTORY, AppStatus(version_code=3, installed=True)),
        ("c.d", None, INVENTORY, AppStatus(version_code=None, installed=True)),
        ("x.y", None, INVENTORY, AppStatus(version_code=None, installed=False)),
        ("a.b", None, [], AppStatus(version_code=None, installed=False)),
    ],
)  # fmt: skip
def test_app_status(
    package: str,
    event: InstallEvent | None,
    inventory: list[dict[str, object]],
    expected: AppStatus,
) -> None:
    """An install event's outcome wins; else the inventory (installed); else not installed."""
    assert app_status(package, event=event, inventory=inventory) == expected
