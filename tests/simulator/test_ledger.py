"""Events lost or duplicated: the ledger of what agents queued against the server's record."""

from __future__ import annotations

from simulator.ledger import KEPT, EventLedger, reconcile

UUIDS = {"u1": "S1", "u2": "S2"}


def on_server(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"deviceUuid": uuid, "id": event_id} for uuid, event_id in pairs]


def test_every_event_once_is_clean() -> None:
    ledger = EventLedger()
    ledger("S1", {"id": "a"})
    ledger("S1", {"id": "b"})
    ledger("S2", {"id": "c"})
    ledger("S2", {"kind": "no id"})  # not an event the server could hold: not counted
    check = reconcile(ledger.queued(), {}, on_server(("u1", "a"), ("u1", "b"), ("u2", "c")), UUIDS)
    assert (check.queued, check.on_server, check.lost, check.duplicated, check.pending) == (
        3, 3, 0, 0, 0,
    )  # fmt: skip
    assert check.violations == [] and ledger.count() == 3


def test_a_missing_event_is_lost_unless_still_queued() -> None:
    queued = {"S1": ["a", "b", "c"]}
    check = reconcile(queued, {"S1": {"c"}}, on_server(("u1", "a")), UUIDS)
    assert (check.lost, check.pending) == (1, 1)
    assert check.violations == [{"violation": "lost", "serial": "S1", "id": "b"}]


def test_an_id_stored_twice_or_never_queued_is_duplicated() -> None:
    queued = {"S1": ["a"]}
    server = on_server(("u1", "a"), ("u1", "a"), ("u2", "z"), ("elsewhere", "x"))
    check = reconcile(queued, {}, server, UUIDS)
    assert check.duplicated == 2  # "a" once too many, "z" queued by nobody; "x" not this run's
    assert {(v["id"], v["why"]) for v in check.violations} == {
        ("a", "stored more than once"),
        ("z", "no agent queued it"),
    }
    assert check.to_json()["duplicated"] == 2


def test_violations_quoted_are_bounded() -> None:
    queued = {"S1": [f"e{i}" for i in range(100)]}
    check = reconcile(queued, {}, [], UUIDS)
    assert check.lost == 100 and len(check.violations) == KEPT
