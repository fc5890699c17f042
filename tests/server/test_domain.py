"""Pure server decisions, without sockets: paging, filters, ranges, group trees, profile rules,
device lookups and who needs a sync."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.devices import DeviceLookup, parse_device_batch, parse_device_lookup
from server.domain.groups import creates_cycle, with_descendants
from server.domain.paging import parse_page_request
from server.domain.profiles import (
    default_name,
    next_updated,
    normalize_time,
    offered_otas,
    parse_profile,
    parse_updated,
    wakes_to_apply,
)
from server.domain.ranges import Unsatisfiable, parse_range
from server.domain.scope import ScopedProfile, SiteScope, covering_changed
from server.errors import BadJson, InvalidField

SORTABLE = frozenset({"created"})
FILTERABLE = frozenset({"serialNo"})


def test_page_defaults_and_bounds() -> None:
    """page 0, size 20, asc by default; size 1..500; page >= 0."""
    page = parse_page_request({}, sortable=SORTABLE, filterable=FILTERABLE)
    assert (page.page, page.size, page.descending, page.filters) == (0, 20, False, {})
    assert (
        parse_page_request(
            {"size": "500", "page": "3"}, sortable=SORTABLE, filterable=FILTERABLE
        ).offset
        == 1500
    )
    for bad in ({"size": "0"}, {"size": "501"}, {"page": "-1"}, {"page": "x"}):
        with pytest.raises(InvalidField):
            parse_page_request(bad, sortable=SORTABLE, filterable=FILTERABLE)


def test_filter_parsing() -> None:
    """A scalar becomes a one-item list; unknown keys and nested values are refused."""
    page = parse_page_request(
        {"filter": '{"serialNo": "A"}'}, sortable=SORTABLE, filterable=FILTERABLE
    )
    assert page.filters == {"serialNo": ["A"]}
    for bad in ('{"other": 1}', '{"serialNo": [[1]]}', "[]", "{"):
        with pytest.raises(InvalidField):
            parse_page_request({"filter": bad}, sortable=SORTABLE, filterable=FILTERABLE)


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=50-500", 100, (50, 99)),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
        ("bytes=9-3", 100, None),
    ],
)
def test_ranges(header: str | None, length: int, expected: tuple[int, int] | None) -> None:
    """Single byte ranges are honoured; others fall back to the whole file."""
    assert parse_range(header, length) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=150-200"])
def test_unsatisfiable_ranges(header: str) -> None:
    """Ranges starting at or past the end are unsatisfiable."""
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


@given(st.integers(1, 10_000), st.integers(0, 20_000), st.integers(0, 20_000))
def test_range_is_always_inside_the_file(length: int, first: int, last: int) -> None:
    """Whatever the header, a returned span lies inside the file and is non-empty."""
    try:
        span = parse_range(f"bytes={first}-{last}", length)
    except Unsatisfiable:
        assert first >= length
        return
    if span is not None:
        assert 0 <= span[0] <= span[1] < length


def test_group_cycles_and_descendants() -> None:
    """A group may not move under itself or a descendant; descendants include all levels."""
    parents = {"a": None, "b": "a", "c": "b", "d": None}
    assert creates_cycle("a", "c", parents) and creates_cycle("a", "a", parents)
    assert not creates_cycle("c", "d", parents) and not creates_cycle("d", None, parents)
    assert with_descendants(["a"], parents) == {"a", "b", "c"}
    assert with_descendants(["unknown"], parents) == set()


def _loops_after_move(group: str, new_parent: str | None, parents: dict[str, str | None]) -> bool:
    """Oracle: walking up from `group` after the move never reaches a root."""
    moved = {**parents, group: new_parent}
    current: str | None = group
    for _ in range(len(moved) + 1):
        if current is None:
            return False
        current = moved.get(current)
    return current is not None


def test_cycle_check_on_a_map_that_already_loops() -> None:
    """A parent chain that runs into an existing loop is refused, without looping forever."""
    parents: dict[str, str | None] = {"a": "b", "b": "a", "c": None}
    assert creates_cycle("c", "a", parents)
    assert not creates_cycle("a", "c", parents)


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from([None, *"abcdefgh"])),
    st.sampled_from("abcdefgh"),
    st.sampled_from([None, *"abcdefgh"]),
)
def test_cycle_check_never_loops(
    parents: dict[str, str | None], group: str, new_parent: str | None
) -> None:
    """creates_cycle terminates even on maps that already hold a loop, and answers True exactly
    when the move would leave `group` on a parent chain that never reaches a root."""
    assert creates_cycle(group, new_parent, parents) is _loops_after_move(
        group, new_parent, parents
    )


def test_device_batch_rules() -> None:
    """Non-list is 40000; duplicates and missing serials are 40001; serials are trimmed."""
    with pytest.raises(BadJson):
        parse_device_batch({"a": 1})
    with pytest.raises(InvalidField, match="appears twice"):
        parse_device_batch([{"profile": {"hardware_info": {"serial_no": s}}} for s in ("A", " A ")])
    parsed = parse_device_batch([{"profile": {"hardware_info": {"serial_no": " X "}}}])
    assert parsed[0].hardware.serial_no == "X" and parsed[0].enabled is True


def test_profile_default_name_and_times() -> None:
    """Default name is the UTC save time; times accept ISO with offsets or epoch ms."""
    assert default_name(0) == "19700101_00:00:00"
    assert normalize_time("2026-01-01T01:00:00+01:00", "t") == "2026-01-01T00:00:00.000Z"
    assert normalize_time(1500, "t") == "1970-01-01T00:00:01.500Z"
    assert normalize_time(None, "t") is None
    assert parse_updated(1234) == 1234 and parse_updated("1970-01-01T00:00:01.234Z") == 1234
    with pytest.raises(InvalidField):
        parse_updated(None)


def test_profile_references_are_collected() -> None:
    """parse_profile lists the apps, images, groups and serials a profile names."""
    profile = parse_profile(
        {
            "apps": {"install": [{"uuid": "app1"}]},
            "otas": ["o1", {"uuid": "o2"}],
            "scope": {"group": ["g1"], "device": ["s1"]},
        },
        now_ms=0,
    )
    assert (profile.app_uuids, profile.ota_uuids, profile.group_uuids, profile.device_serials) == (
        ("app1",),
        ("o1", "o2"),
        ("g1",),
        ("s1",),
    )
    assert profile.doc["otas"] == ["o1", {"uuid": "o2"}]


def test_a_change_is_always_after_the_version_it_replaces() -> None:
    """`updated` moves forward even when the clock does not (same ms, or a clock behind)."""
    assert next_updated(now=500, current=100) == 500
    assert next_updated(now=100, current=100) == 101
    assert next_updated(now=50, current=100) == 101


@given(st.integers(0, 10**13), st.integers(0, 10**13))
def test_next_updated_is_monotonic(now: int, current: int) -> None:
    assert next_updated(now=now, current=current) > current
    assert next_updated(now=now, current=current) >= now


def test_offered_images_and_wake_to_apply() -> None:
    """`otas` entries are fileUuids or {"uuid": ...}; wakeToApply counts only when enabled."""
    assert offered_otas({"otas": ["a", {"uuid": "b"}]}) == ["a", "b"]
    assert offered_otas({}) == []
    assert wakes_to_apply({"enabled": True, "profile": {"wakeToApply": True}})
    assert wakes_to_apply({"profile": {"wakeToApply": True}})
    assert not wakes_to_apply({"enabled": False, "profile": {"wakeToApply": True}})
    assert not wakes_to_apply({"enabled": True, "profile": {}})


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"deviceUuid": "d1", "serialNo": "S1"}, DeviceLookup(uuid="d1", serial=None)),
        ({"uuid": "d1"}, DeviceLookup(uuid="d1", serial=None)),
        ({"serialNo": "S1"}, DeviceLookup(uuid=None, serial="S1")),
        ({"deviceUuid": "", "serialNo": "S1"}, DeviceLookup(uuid=None, serial="S1")),
    ],
)
def test_device_lookup(query: dict[str, str], expected: DeviceLookup) -> None:
    """A device is named by deviceUuid (or uuid) first, else by serialNo."""
    assert parse_device_lookup(query) == expected


def test_device_lookup_needs_a_name() -> None:
    with pytest.raises(InvalidField, match="deviceUuid or serialNo"):
        parse_device_lookup({"serialNo": ""})


def scoped(
    uuid: str, updated: int, *, serials: frozenset[str], excluded: frozenset[str] = frozenset()
) -> ScopedProfile:
    return ScopedProfile(
        uuid=uuid,
        updated=updated,
        is_global=False,
        serials=frozenset(serials),
        groups=frozenset(),
        excluded=frozenset(excluded),
        doc={},
    )


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ([], [], False),
        (
            [scoped("p", 1, serials=frozenset({"S1"}))],
            [scoped("p", 1, serials=frozenset({"S1"}))],
            False,
        ),
        (
            [scoped("p", 1, serials=frozenset({"S1"}))],
            [scoped("p", 2, serials=frozenset({"S1"}))],
            True,
        ),  # edited
        ([], [scoped("p", 1, serials=frozenset({"S1"}))], True),  # gained
        ([scoped("p", 1, serials=frozenset({"S1"}))], [], True),  # lost
        ([], [scoped("p", 1, serials=frozenset({"S2"}))], False),  # another device's profile
        (
            [scoped("p", 1, serials=frozenset({"S1"}))],
            [scoped("p", 1, serials=frozenset({"S1"}), excluded=frozenset({"d1"}))],
            True,
        ),
    ],
)
def test_covering_changed(
    before: list[ScopedProfile], after: list[ScopedProfile], changed: bool
) -> None:
    """A device needs a sync when the versions of the profiles covering it differ."""
    assert (
        covering_changed(
            SiteScope(tuple(before)),
            SiteScope(tuple(after)),
            serial="S1",
            group_uuid=None,
            device_uuid="d1",
        )
        is changed
    )
