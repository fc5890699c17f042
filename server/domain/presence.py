"""Presence (§3 `states.state`) from check-in times, as a pure function and its SQL twin.

A device checks in every `--checkin-interval` seconds, or every SLEEP_INTERVAL_S while it
reports sleeping (`next_checkin_s`). Its presence:

- `waking_up`: a wake was sent and the device has not checked in since, for WAKE_WINDOW_S;
- `standby`: the device reported sleeping and checked in within SLEEP_INTERVAL_S + MARGIN_S
  (sleeping devices send a heartbeat every 20 min);
- `online`: checked in within its interval + MARGIN_S (3 min);
- `offline`: otherwise, and before the first check-in.
The SQL expression computes the same for filters and sorting; a test holds the two together.
"""

from __future__ import annotations

from enum import StrEnum

MARGIN_S = 180
SLEEP_INTERVAL_S = 1200
WAKE_WINDOW_S = 65  # a woken device has 60 s to check in, plus 5 s of grace


class Presence(StrEnum):
    ONLINE = "online"
    STANDBY = "standby"
    WAKING_UP = "waking_up"
    OFFLINE = "offline"


def next_checkin_s(*, sleeping: bool, interval_s: int) -> int:
    """`nextCheckinSeconds`: the server's interval, or SLEEP_INTERVAL_S while the device sleeps."""
    return SLEEP_INTERVAL_S if sleeping else interval_s


def presence(
    *, last_checkin: int | None, interval_s: int, sleeping: bool, wake_sent: int | None, now: int
) -> Presence:
    if (
        wake_sent is not None
        and (last_checkin is None or last_checkin < wake_sent)
        and now <= wake_sent + WAKE_WINDOW_S * 1000
    ):
        return Presence.WAKING_UP
    if last_checkin is None:
        return Presence.OFFLINE
    age = now - last_checkin
    if sleeping:
        return Presence.STANDBY if age <= (SLEEP_INTERVAL_S + MARGIN_S) * 1000 else Presence.OFFLINE
    return Presence.ONLINE if age <= (interval_s + MARGIN_S) * 1000 else Presence.OFFLINE


def presence_sql(now: int) -> str:
    """The same rule over the `devices` columns, with `now` (an int) written in."""
    now = int(now)
    return (
        "(CASE"
        f" WHEN wake_sent IS NOT NULL AND (last_checked_in IS NULL OR last_checked_in < wake_sent)"
        f" AND {now} <= wake_sent + {WAKE_WINDOW_S * 1000} THEN 'waking_up'"
        " WHEN last_checked_in IS NULL THEN 'offline'"
        f" WHEN sleeping = 1 THEN (CASE WHEN {now} - last_checked_in <= "
        f"{(SLEEP_INTERVAL_S + MARGIN_S) * 1000} THEN 'standby' ELSE 'offline' END)"
        f" WHEN {now} - last_checked_in <= (interval_s + {MARGIN_S}) * 1000 THEN 'online'"
        " ELSE 'offline' END)"
    )
