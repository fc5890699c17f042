"""Presence (§3 states.state): the Python rule and its SQL twin agree on every input."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.presence import (
    SLEEP_INTERVAL_S,
    Presence,
    next_checkin_s,
    presence,
    presence_sql,
)

NOW = 1_790_000_000_000
times = st.one_of(st.none(), st.integers(NOW - 3_000_000, NOW + 1000))


def test_rules() -> None:
    """online within interval + 3 min; standby while sleeping; waking_up after a wake."""
    assert (
        presence(last_checkin=None, interval_s=60, sleeping=False, wake_sent=None, now=NOW)
        == Presence.OFFLINE
    )
    assert (
        presence(last_checkin=NOW - 240_000, interval_s=60, sleeping=False, wake_sent=None, now=NOW)
        == Presence.ONLINE
    )
    assert (
        presence(last_checkin=NOW - 241_000, interval_s=60, sleeping=False, wake_sent=None, now=NOW)
        == Presence.OFFLINE
    )
    assert (
        presence(
            last_checkin=NOW - 1_000_000, interval_s=60, sleeping=True, wake_sent=None, now=NOW
        )
        == Presence.STANDBY
    )
    assert (
        presence(
            last_checkin=NOW - 2_000_000,
            interval_s=60,
            sleeping=True,
            wake_sent=NOW - 5000,
            now=NOW,
        )
        == Presence.WAKING_UP
    )
    assert (
        presence(
            last_checkin=NOW - 2_000_000,
            interval_s=60,
            sleeping=True,
            wake_sent=NOW - 70_000,
            now=NOW,
        )
        == Presence.OFFLINE
    )


@settings(max_examples=500)
@given(times, st.integers(10, 3600), st.booleans(), times)
def test_sql_twin_agrees(last: int | None, interval: int, sleeping: bool, wake: int | None) -> None:
    """The SQL expression gives the same state as the Python rule."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE devices (last_checked_in, interval_s, sleeping, wake_sent)")
        conn.execute(
            "INSERT INTO devices VALUES (?, ?, ?, ?)", (last, interval, int(sleeping), wake)
        )
        in_sql = conn.execute(f"SELECT {presence_sql(NOW)} FROM devices").fetchone()[0]
    finally:
        conn.close()
    expected = presence(
        last_checkin=last, interval_s=interval, sleeping=sleeping, wake_sent=wake, now=NOW
    )
    assert in_sql == expected


def test_next_checkin() -> None:
    """nextCheckinSeconds: the server's interval, or the sleep interval while sleeping."""
    assert next_checkin_s(sleeping=False, interval_s=60) == 60
    assert next_checkin_s(sleeping=True, interval_s=60) == SLEEP_INTERVAL_S
