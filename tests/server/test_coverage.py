"""Profile coverage, pure: which profiles a device's events may name, and unscopeIfApplied."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.coverage import (
    UnscopeAction,
    first_uncovered,
    named_elsewhere,
    unscope,
)
from server.domain.device_reports import EventInput


def event(event_id: str, profile: str | None) -> EventInput:
    return EventInput(
        id=event_id,
        at_ms=0,
        profile_uuid=profile,
        kind="profile",
        target="",
        status="applied",
        reason="",
        doc={},
    )


@pytest.mark.parametrize(
    ("events", "covering", "covered_before", "known", "refused"),
    [
        ([event("e1", None)], set(), set(), set(), None),  # names no profile
        ([event("e1", "p")], {"p"}, set(), set(), None),  # covers the device now
        ([event("e1", "p")], set(), {"p"}, set(), None),  # covered it once
        ([event("e1", "p")], set(), set(), {"e1"}, None),  # a retry of a stored event
        ([event("e1", "p")], set(), set(), set(), "e1"),
        ([event("e1", "p"), event("e2", "q")], {"p"}, set(), set(), "e2"),
        ([event("e1", "q"), event("e2", "q")], set(), set(), {"e1"}, "e2"),
        ([event("e1", "q"), event("e2", "r")], set(), set(), set(), "e1"),  # the first one
    ],
)
def test_which_profiles_events_may_name(
    events: list[EventInput],
    covering: set[str],
    covered_before: set[str],
    known: set[str],
    refused: str | None,
) -> None:
    """An event may name a profile covering the device now or once, or be a stored retry;
    the first event that is none of these is the one refused."""
    found = first_uncovered(
        events, covering=covering, covered_before=covered_before, known_ids=known
    )
    assert (found.id if found else None) == refused


def test_only_profiles_not_covering_now_are_looked_up() -> None:
    """The store checks the history of the named profiles that do not cover the device now."""
    events = [event("e1", "p"), event("e2", "q"), event("e3", None), event("e4", "q")]
    assert named_elsewhere(events, {"p"}) == {"q"}
    assert named_elsewhere(events, {"p", "q"}) == frozenset()


@given(
    st.lists(
        st.tuples(st.sampled_from(["e1", "e2", "e3"]), st.sampled_from([None, "p", "q", "r"])),
        max_size=6,
    ),
    st.sets(st.sampled_from(["p", "q", "r"])),
    st.sets(st.sampled_from(["e1", "e2", "e3"])),
)
def test_profiles_covering_now_or_once_never_refuse(
    pairs: list[tuple[str, str | None]], covering: set[str], known: set[str]
) -> None:
    """Whatever the batch, marking every profile looked up as covered-once accepts it, and
    a refused event always names a profile outside both sets and is not a retry."""
    events = [event(i, p) for i, p in pairs]
    looked_up = named_elsewhere(events, covering)
    assert (
        first_uncovered(events, covering=covering, covered_before=looked_up, known_ids=known)
        is None
    )
    refused = first_uncovered(events, covering=covering, covered_before=set(), known_ids=known)
    if refused is not None:
        assert refused.profile_uuid in looked_up and refused.id not in known


def profile(
    *,
    devices: list[str],
    groups: list[str] | None = None,
    unscope_if_applied: bool = True,
    remove_if_no_scope: bool = False,
    is_global: bool = False,
) -> dict[str, Any]:
    return {
        "isGlobal": is_global,
        "enabled": True,
        "profile": {
            "name": "p",
            "unscopeIfApplied": unscope_if_applied,
            "removeIfNoScope": remove_if_no_scope,
        },
        "scope": {"group": groups or [], "device": devices},
        "otas": [],
    }


@pytest.mark.parametrize(
    ("doc", "action", "devices_after"),
    [
        (profile(devices=["S1", "S2"], unscope_if_applied=False), UnscopeAction.KEEP, None),
        (profile(devices=[], is_global=True), UnscopeAction.KEEP, None),
        (profile(devices=["S1", "S2"]), UnscopeAction.EXCLUDE, ["S2"]),
        (profile(devices=["S2"], groups=["g"]), UnscopeAction.EXCLUDE, ["S2"]),  # via a group
        (profile(devices=["S1"], groups=["g"], remove_if_no_scope=True), UnscopeAction.EXCLUDE, []),
        (profile(devices=["S1", "S2"], remove_if_no_scope=True), UnscopeAction.EXCLUDE, ["S2"]),
        (profile(devices=["S1"], remove_if_no_scope=True), UnscopeAction.DELETE, None),
        (profile(devices=["S1"]), UnscopeAction.EXCLUDE, []),  # empty, but kept
    ],
)
def test_unscope_if_applied(
    doc: dict[str, Any], action: UnscopeAction, devices_after: list[str] | None
) -> None:
    """Applying device S1: excluded (serial out of scope.device) when unscopeIfApplied and not
    global; deleted when removeIfNoScope leaves no serial and no group."""
    change = unscope(doc, "S1")
    assert change.action == action
    if devices_after is not None:
        assert change.doc["scope"]["device"] == devices_after
        assert change.doc["scope"]["group"] == doc["scope"]["group"]
        assert {k: v for k, v in change.doc.items() if k != "scope"} == {
            k: v for k, v in doc.items() if k != "scope"
        }


SERIALS = st.lists(st.sampled_from(["S1", "S2", "S3"]), max_size=4, unique=True)


@given(
    SERIALS,
    st.lists(st.sampled_from(["g1", "g2"]), max_size=2, unique=True),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["S1", "S2", "S4"]),
)
def test_unscope_invariants(
    devices: list[str],
    groups: list[str],
    unscope_if_applied: bool,
    remove_if_no_scope: bool,
    is_global: bool,
    serial: str,
) -> None:
    """The stored doc is never mutated; only the applying serial leaves the scope (order kept);
    a profile is deleted only when removeIfNoScope leaves it empty; a second application of the
    result changes nothing more."""
    doc = profile(
        devices=devices,
        groups=groups,
        unscope_if_applied=unscope_if_applied,
        remove_if_no_scope=remove_if_no_scope,
        is_global=is_global,
    )
    original = copy.deepcopy(doc)
    change = unscope(doc, serial)
    assert doc == original
    if not unscope_if_applied or is_global:
        assert change.action == UnscopeAction.KEEP
        return
    remaining = [s for s in devices if s != serial]
    if change.action == UnscopeAction.DELETE:
        assert remove_if_no_scope and not remaining and not groups
        return
    assert change.action == UnscopeAction.EXCLUDE
    assert change.doc["scope"] == {"group": groups, "device": remaining}
    again = unscope(change.doc, serial)
    assert again.action == UnscopeAction.EXCLUDE and again.doc == change.doc
