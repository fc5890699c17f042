"""The per-request values made without their frozen __init__ (protocol.slot_setters) equal the
ones the constructors make, and the check-in reply's memo never lets a bad value through."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent import protocol
from agent.errors import ProtocolError
from agent.protocol import CheckinReply, ProfileRef, Request, Response
from agent.transport.base import Exchange, exchange


def test_fast_makers_equal_the_constructors() -> None:
    assert exchange("checkin", 1.0, 2.0, 0.5, 200, None) == Exchange(
        name="checkin", intended=1.0, started=2.0, duration=0.5, status=200, error=None
    )
    assert protocol.response(404, b"{}", {"A": "b"}) == Response(
        status=404, body=b"{}", headers={"A": "b"}
    )
    creds = protocol.Credentials(api_key="k", device_token="t")
    body = {"states": {"clientVersion": 1}}
    made = protocol.checkin(creds, body, intended=3.5)
    assert made == Request(
        method="POST",
        path=protocol.CHECKIN,
        name="checkin",
        headers=protocol.device_headers(creds),
        body=body,
        intended=3.5,
    )
    assert made.body is not body  # a copy, as before
    with pytest.raises(AttributeError):
        made.name = "other"  # type: ignore[misc] # still frozen


def test_slot_setters_refuse_names_that_are_not_the_fields() -> None:
    with pytest.raises(TypeError, match="fields"):
        protocol.slot_setters(Response, "status", "body")  # "headers" forgotten

    @dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            raise ValueError

    with pytest.raises(TypeError):
        protocol.slot_setters(Checked, "value")


def answer(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "nextCheckinSeconds": 60,
        "inventoryWanted": False,
        "profiles": [{"uuid": "p1", "updated": 5}],
    }
    data.update(changes)
    return data


def test_an_equal_answer_reuses_the_reply_a_different_one_does_not() -> None:
    first = protocol.parse_checkin_reply(answer())
    assert first == CheckinReply(
        next_checkin_s=60.0, inventory_wanted=False, profiles=(ProfileRef(uuid="p1", updated=5),)
    )
    assert protocol.parse_checkin_reply(answer()) is first
    assert protocol.parse_checkin_reply(answer(nextCheckinSeconds=60.0)) is first
    changed = protocol.parse_checkin_reply(answer(profiles=[{"uuid": "p1", "updated": 6}]))
    assert changed.profiles == (ProfileRef(uuid="p1", updated=6),)
    assert protocol.parse_checkin_reply(answer(inventoryWanted=True)).inventory_wanted is True


def test_the_callers_dict_changed_later_does_not_change_the_reply() -> None:
    data = answer()
    reply = protocol.parse_checkin_reply(data)
    data["profiles"][0]["updated"] = 99  # type: ignore[index]
    assert reply.profiles[0].updated == 5
    assert protocol.parse_checkin_reply(data).profiles[0].updated == 99


@pytest.mark.parametrize(
    "bad",
    [
        answer(profiles=[{"uuid": "p1", "updated": True}]),  # equal to 1, still not an int
        answer(profiles=[{"uuid": "p1", "updated": 5.0}]),  # equal to 5, still not an int
        answer(profiles=[{"uuid": 1, "updated": 5}]),
        answer(profiles=["p1"]),
        answer(profiles={"uuid": "p1"}),
        answer(nextCheckinSeconds=True),
        answer(nextCheckinSeconds="60"),
        answer(nextCheckinSeconds=None),
        ["not", "an", "object"],
    ],
)
def test_a_bad_value_is_refused_even_when_it_equals_the_memo(bad: object) -> None:
    protocol.parse_checkin_reply(answer())
    protocol.parse_checkin_reply(
        answer(nextCheckinSeconds=1, profiles=[{"uuid": "p1", "updated": 1}])
    )
    with pytest.raises(ProtocolError, match="unexpected value"):
        protocol.parse_checkin_reply(bad)
