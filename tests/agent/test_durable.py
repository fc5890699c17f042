"""The agent's durable state and outbox: atomic files, survive restarts, refuse corruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load
from agent.errors import ConfigError, StateError
from agent.runtime.outbox import Outbox
from agent.runtime.state import AgentState, StateStore


def test_state_round_trip_is_private(tmp_path: Path) -> None:
    """state.json is written with mode 0600 and read back whole."""
    store = StateStore(tmp_path / "state")
    store.prepare()
    store.save(AgentState(serial="S1", token="secret", registrations=1))
    assert (tmp_path / "state" / "state.json").stat().st_mode & 0o777 == 0o600
    assert StateStore(tmp_path / "state").load().token == "secret"
    assert not list((tmp_path / "state").glob(".*tmp"))


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    """A corrupt state file is refused with a sentence naming it (no silent re-enrolment)."""
    store = StateStore(tmp_path)
    (tmp_path / "state.json").write_text("{half")
    with pytest.raises(StateError, match="corrupt"):
        store.load()


def test_outbox_survives_restart_in_order(tmp_path: Path) -> None:
    """Queued events come back in order from a new Outbox on the same folder; ack removes."""
    first = Outbox(tmp_path)
    first.prepare()
    ids = [first.put_event({"kind": "app", "status": "installed", "n": i}) for i in range(3)]
    second = Outbox(tmp_path)
    second.prepare()
    second.put_event({"kind": "app", "status": "failed", "n": 3})
    items = second.pending("event")
    assert [i.body["n"] for i in items] == [0, 1, 2, 3]
    assert [i.body["id"] for i in items[:3]] == ids
    second.ack(items[:2])
    assert [i.body["n"] for i in Outbox(tmp_path).pending("event")] == [2, 3]


def test_newest_inventory_replaces_older(tmp_path: Path) -> None:
    """Only the newest inventory report stays queued."""
    outbox = Outbox(tmp_path)
    outbox.prepare()
    outbox.put_inventory({"inventoryHash": "1"})
    outbox.put_inventory({"inventoryHash": "2"})
    assert [i.body["inventoryHash"] for i in outbox.pending("inventory")] == ["2"]


def test_unreadable_item_is_quarantined(tmp_path: Path) -> None:
    """A damaged outbox file is moved aside with a warning; the queue keeps flowing."""
    outbox = Outbox(tmp_path)
    outbox.prepare()
    outbox.put_event({"n": 1})
    (tmp_path / "000000000099-event-broken.json").write_text("{")
    assert [i.body["n"] for i in outbox.pending("event")] == [1]
    assert (tmp_path / "bad" / "000000000099-event-broken.json").exists()


def test_config_precedence(tmp_path: Path) -> None:
    """defaults < TOML < environment < flags."""
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'server = "http://toml:1"\napi_key = "toml-key"\nplatform = "android"\n'
        "checkin_interval_s = 30\n"
    )
    config = load({"platform": "simulated"}, toml, env={"MIDM_API_KEY": "env-key"})
    assert (config.server, config.api_key, config.platform, config.checkin_interval_s) == (
        "http://toml:1",
        "env-key",
        "simulated",
        30.0,
    )
    assert load({}, None, env={}).platform == AgentConfig().platform


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("server = ", "not valid TOML"),
        ('colour = "red"', "unknown setting"),
        ('checkin_interval_s = "often"', "not a number"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, needle: str) -> None:
    """A bad TOML file is a ConfigError naming the problem."""
    toml = tmp_path / "agent.toml"
    toml.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        load({}, toml, env={})


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({}, "no server"),
        ({"server": "ftp://x"}, "http://"),
        ({"server": "http://x"}, "no API key"),
        (
            {"server": "http://x", "api_key": "k", "admin_email": "a"},
            "both an email and a password",
        ),
    ],
)
def test_config_checks(flags: dict[str, str], needle: str) -> None:
    """Missing or malformed settings are refused before anything runs."""
    with pytest.raises(ConfigError, match=needle):
        load(flags, None, env={}).check()
