"""The planner and schedule, without I/O: one case per field and per interaction."""

from __future__ import annotations

from typing import Any

import pytest

from agent.core.planner import Conditions, ProfileProgress, plan
from agent.core.schedule import current_occurrence, minutes_until_open

NOW = 1_790_000_000_000  # 2026-09-21T14:13:20Z
DAY = 86_400_000
AWAKE = Conditions(ac=True, sleeping=False, online=True, network="wifi", local_minutes=12 * 60)


def profile(**section: Any) -> dict[str, Any]:
    extra = section.pop("doc", {})
    return {
        "profile": {"applyOrder": "none", **section},
        "apps": {"install": [{"uuid": "A1", "silent_install": True}]},
        "otas": ["O1"],
        "settings": {"otas": {"need_ac": False}, "wifi": {"ssid": "lab"}},
        **extra,
    }


def run(
    doc: dict[str, Any],
    conditions: Conditions = AWAKE,
    progress: dict[str, ProfileProgress] | None = None,
    now: int = NOW,
    downloaded: frozenset[str] = frozenset(),
) -> tuple[list[str], list[tuple[str, str]]]:
    result = plan([("P", 1, doc)], conditions, progress or {}, now, downloaded)
    return ([a.key for a in result.actions], [(d.key, str(d.reason)) for d in result.deferrals])


def done(*keys: str, updated: int = 1, occurrence: int = 0) -> dict[str, ProfileProgress]:
    return {
        "P": ProfileProgress(
            updated=updated, occurrence=occurrence, items=dict.fromkeys(keys, "installed")
        )
    }


@pytest.mark.parametrize(
    ("doc", "conditions", "progress", "expected"),
    [
        # applyOrder: that part first; later parts wait for it
        (profile(), AWAKE, None, (["app:A1"], [])),
        (profile(applyOrder="otas"), AWAKE, None, (["ota"], [])),
        (profile(applyOrder="settings"), AWAKE, None, (["settings"], [])),
        (profile(), AWAKE, done("app:A1"), (["ota"], [])),
        (profile(), AWAKE, done("app:A1", "ota"), (["settings"], [])),
        (profile(), AWAKE, done("app:A1", "ota", "settings"), ([], [])),
        # a new profile version starts over
        (profile(), AWAKE, done("app:A1", "ota", "settings", updated=0), (["app:A1"], [])),
        # start
        (profile(startsOn="2026-09-22T00:00:00Z"), AWAKE, None, ([], [("profile", "not_before")])),
        (
            profile(doc={"schedule_date": {"start_on": NOW + 1000}}),
            AWAKE,
            None,
            ([], [("profile", "not_before")]),
        ),
        # timeOption window
        (profile(timeOption="01:00-05:00"), AWAKE, None, ([], [("profile", "window")])),
        (profile(timeOption="11:00-13:00"), AWAKE, None, (["app:A1"], [])),
        (profile(timeOption="22:00-02:00"), AWAKE, None, ([], [("profile", "window")])),
        # applyWhile.sleeping / offline
        (
            profile(applyWhile={"sleeping": False}),
            Conditions(ac=True, sleeping=True, online=True, network="wifi", local_minutes=720),
            None,
            ([], [("profile", "sleeping")]),
        ),
        (
            profile(applyWhile={"sleeping": True}),
            Conditions(ac=True, sleeping=True, online=True, network="wifi", local_minutes=720),
            None,
            (["app:A1"], []),
        ),
        (
            profile(),
            Conditions(ac=True, sleeping=False, online=False, network="none", local_minutes=720),
            None,
            ([], [("profile", "offline")]),
        ),
        (
            profile(applyWhile={"offline": True}),
            Conditions(ac=True, sleeping=False, online=False, network="none", local_minutes=720),
            None,
            (["settings"], [("app:A1", "offline"), ("ota", "offline")]),
        ),
        # updateVia
        (
            profile(updateVia="ethernet"),
            AWAKE,
            None,
            (["settings"], [("app:A1", "network"), ("ota", "network")]),
        ),
        (profile(updateVia="wifi"), AWAKE, None, (["app:A1"], [])),
        # need_ac: the image waits, later parts go on (deferred counts as settled)
        (
            profile(doc={"settings": {"otas": {"need_ac": True}, "wifi": {}}}),
            Conditions(ac=False, sleeping=False, online=True, network="wifi", local_minutes=720),
            done("app:A1"),
            (["settings"], [("ota", "need_ac")]),
        ),
        (
            profile(doc={"settings": {"otas": {"need_ac": True}, "wifi": {}}}),
            AWAKE,
            done("app:A1"),
            (["ota"], []),
        ),
        # interactions: need_ac + sleeping + window closed: the window holds it all first
        (
            profile(
                timeOption="01:00-02:00",
                applyWhile={"sleeping": False},
                doc={"settings": {"otas": {"need_ac": True}}},
            ),
            Conditions(ac=False, sleeping=True, online=True, network="wifi", local_minutes=720),
            None,
            ([], [("profile", "window")]),
        ),
        (
            profile(applyWhile={"sleeping": False}, doc={"settings": {"otas": {"need_ac": True}}}),
            Conditions(ac=False, sleeping=True, online=True, network="wifi", local_minutes=720),
            None,
            ([], [("profile", "sleeping")]),
        ),
    ],
)
def test_plan_table(
    doc: dict[str, Any],
    conditions: Conditions,
    progress: dict[str, ProfileProgress] | None,
    expected: tuple[list[str], list[tuple[str, str]]],
) -> None:
    """Each profile field and interaction gives the documented actions and deferrals."""
    assert run(doc, conditions, progress) == expected


def test_downloaded_content_installs_offline() -> None:
    """applyWhile.offline: what is already downloaded may be installed without the server."""
    offline = Conditions(ac=True, sleeping=False, online=False, network="none", local_minutes=720)
    actions, deferrals = run(
        profile(applyWhile={"offline": True}), offline, downloaded=frozenset({"A1"})
    )
    assert actions == ["app:A1"] and deferrals == []  # later parts wait for the apps part


def test_consent_follows_silent_install() -> None:
    """silent_install false on an app or in settings.otas asks for consent."""
    doc = profile()
    doc["apps"]["install"][0]["silent_install"] = False
    result = plan([("P", 1, doc)], AWAKE, {}, NOW)
    assert result.actions[0].consent
    doc["settings"]["otas"]["silent_install"] = False
    result = plan([("P", 1, doc)], AWAKE, done("app:A1"), NOW)
    assert result.actions[0].key == "ota" and result.actions[0].consent


def test_completed_and_failed_items() -> None:
    """All items done: the profile is completed; a failed item waits for a new version."""
    result = plan([("P", 1, profile())], AWAKE, done("app:A1", "ota", "settings"), NOW)
    assert result.completed == ("P",) and not result.actions
    failed = {
        "P": ProfileProgress(
            updated=1,
            occurrence=0,
            items={"app:A1": "failed", "ota": "applied", "settings": "applied"},
        )
    }
    assert plan([("P", 1, profile())], AWAKE, failed, NOW).completed == ("P",)


def test_repeats_start_new_occurrences() -> None:
    """A daily repeat re-checks the profile each day; endsOption after N stops it."""
    daily = profile(startsOn=NOW - 3 * DAY + 1000, repeatOption="daily", repeatEvery=1)
    assert current_occurrence(daily, NOW).index == 2
    actions, _ = run(daily, progress=done("app:A1", "ota", "settings", occurrence=1))
    assert actions == ["app:A1"]
    ended = profile(startsOn=NOW - 3 * DAY, repeatOption="daily", endsOption="after", ends=2)
    assert current_occurrence(ended, NOW).reason == "ended"
    assert run(ended) == ([], [])
    until = profile(
        startsOn=NOW - 10 * DAY, repeatOption="weekly", endsOption="on", ends=NOW - 5 * DAY
    )
    assert current_occurrence(until, NOW).reason == "ended"
    monthly = profile(startsOn="2026-01-31T00:00:00Z", repeatOption="monthly")
    assert current_occurrence(monthly, NOW).index == 7


def test_window_arithmetic() -> None:
    """Minutes until a window opens, with wrap-around and the exclusive end."""
    assert minutes_until_open("anytime", 5) == 0
    assert minutes_until_open("01:00-05:00", 60) == 0
    assert minutes_until_open("01:00-05:00", 300) == 20 * 60
    assert minutes_until_open("22:00-02:00", 23 * 60) == 0
    assert minutes_until_open("22:00-02:00", 60) == 0
    assert minutes_until_open("22:00-02:00", 3 * 60) == 19 * 60
