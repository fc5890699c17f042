"""The agent's persistence: the file and memory stores behave alike; the file stores write only
what changed, group a commit into one file, write off the event loop, survive restarts, load
the layouts of earlier versions, and move unreadable items aside. Also the agent's config."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.clock import FakeClock
from agent.config import AgentConfig, load
from agent.errors import ConfigError, StateError
from agent.protocol import Request, Response
from agent.runtime import files
from agent.runtime.agent import Agent
from agent.runtime.memory import MemoryOutbox, MemoryStateStore
from agent.runtime.outbox import FileOutbox, ItemKind, Outbox, queued_events
from agent.runtime.state import AgentState, FileStateStore, StateStore
from agent.transport.mock import Handler, MockTransport
from tests.agent.agent_harness import SAFETY_S, sim_platform


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=n + 1)),
        "kind": "settings",
        "status": "applied",
        "n": n,
        **extra,
    }


def drain() -> None:
    """Wait for the writer thread to finish what was queued (unlinks run in the background)."""
    files.writer().submit(lambda: None).result(timeout=SAFETY_S)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every os.fsync call (file or folder), counted."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    yield calls


# -- both implementations ----------------------------------------------------------------------

OUTBOXES: dict[str, Callable[[Path], Outbox]] = {
    "file": lambda folder: FileOutbox(folder / "outbox"),
    "memory": lambda folder: MemoryOutbox(),
}
STORES: dict[str, Callable[[Path], StateStore]] = {
    "file": FileStateStore,
    "memory": lambda folder: MemoryStateStore(),
}


@pytest.mark.parametrize("make", OUTBOXES.values(), ids=OUTBOXES.keys())
async def test_outbox_queue_rules(make: Callable[[Path], Outbox], tmp_path: Path) -> None:
    """Events come out in order and in batches, staged or committed; ack removes exactly what
    was sent; a newer inventory replaces an older one; an event must carry its id."""
    outbox = make(tmp_path)
    outbox.prepare()
    ids = [outbox.put_event(event(n)) for n in range(5)]
    await outbox.commit()
    outbox.put_inventory({"inventoryHash": "1"})
    outbox.put_event(event(5))
    outbox.put_inventory({"inventoryHash": "2"})
    assert ids == [event(n)["id"] for n in range(5)]
    assert [i.body["n"] for i in outbox.pending(ItemKind.EVENT, limit=4)] == [0, 1, 2, 3]
    assert [i.body["inventoryHash"] for i in outbox.pending(ItemKind.INVENTORY)] == ["2"]
    assert outbox.count() == 7
    outbox.ack(outbox.pending(ItemKind.EVENT, limit=2))
    outbox.ack(outbox.pending(ItemKind.INVENTORY))
    assert [i.body["n"] for i in outbox.pending(ItemKind.EVENT)] == [2, 3, 4, 5]
    assert outbox.pending(ItemKind.INVENTORY) == [] and outbox.count() == 4
    with pytest.raises(ValueError, match="needs its id"):
        outbox.put_event({"kind": "settings"})


@pytest.mark.parametrize("make", STORES.values(), ids=STORES.keys())
async def test_state_store_round_trip(make: Callable[[Path], StateStore], tmp_path: Path) -> None:
    """A fresh store loads a fresh state; what was saved and committed loads again."""
    store = make(tmp_path)
    store.prepare()
    state = store.load()
    assert state == AgentState()
    state.token, state.progress = "secret", {"p": {"updated": 1, "occurrence": 0, "items": {}}}
    store.save(state)
    await store.commit()
    again = make(tmp_path) if isinstance(store, FileStateStore) else store
    assert again.load() == state


def test_memory_stores_are_small() -> None:
    """The memory stores are slotted: no per-instance dict in a fleet of thousands."""
    for instance in (MemoryStateStore(), MemoryOutbox()):
        assert not hasattr(instance, "__dict__")


# -- the state file ----------------------------------------------------------------------------


async def test_state_round_trip_is_private(tmp_path: Path) -> None:
    """state.json is written with mode 0600 and read back whole; no temp file stays."""
    store = FileStateStore(tmp_path / "state")
    store.prepare()
    store.save(AgentState(serial="S1", token="secret", registrations=1))
    await store.commit()
    assert (tmp_path / "state" / "state.json").stat().st_mode & 0o777 == 0o600
    assert FileStateStore(tmp_path / "state").load().token == "secret"
    assert not list((tmp_path / "state").glob(".*tmp"))


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    """A corrupt state file is refused with a sentence naming it (no silent re-enrolment)."""
    store = FileStateStore(tmp_path)
    (tmp_path / "state.json").write_text("{half")
    with pytest.raises(StateError, match="corrupt"):
        store.load()


async def test_state_is_written_only_when_a_durable_field_changed(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    """The check-in bookkeeping (last_checkin, last_checkin_error, next_checkin_s) alone is no
    reason to write; a durable field is; `full` writes the bookkeeping too, once."""
    store = FileStateStore(tmp_path)
    store.prepare()
    state = store.load()
    state.token = "t1"
    store.save(state)
    await store.commit()
    assert store.writes == 1 and len(fsyncs) == 2  # the file and its folder
    for moment in range(3):
        state.last_checkin, state.next_checkin_s = 1000 + moment, 300.0
        state.last_checkin_error = f"try {moment}"
        store.save(state)
        await store.commit()
    assert store.writes == 1 and len(fsyncs) == 2
    assert json.loads((tmp_path / "state.json").read_bytes())["last_checkin"] is None
    state.progress["p"] = {"updated": 1, "occurrence": 0, "items": {"settings": "applied"}}
    store.save(state)
    await store.commit()
    written = json.loads((tmp_path / "state.json").read_bytes())
    assert store.writes == 2 and written["last_checkin"] == 1002  # it rode along
    state.last_checkin = 2000
    store.save(state)
    await store.commit(full=True)
    await store.commit(full=True)
    assert store.writes == 3 and FileStateStore(tmp_path).load() == state


async def test_a_loaded_state_is_not_written_again(tmp_path: Path) -> None:
    """A restart that changes nothing writes nothing, even at a full commit."""
    first = FileStateStore(tmp_path)
    first.prepare()
    first.save(AgentState(token="t", last_checkin=5))
    await first.commit(full=True)
    second = FileStateStore(tmp_path)
    second.prepare()
    second.save(second.load())
    await second.commit(full=True)
    assert second.writes == 0


async def test_a_failed_state_write_is_an_error_and_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (disk full) raises StateError naming the file; the next commit writes
    the same state although nothing changed since."""
    store = FileStateStore(tmp_path)
    store.prepare()
    store.save(AgentState(token="t"))

    def full_disk(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agent.runtime.state.write_atomic", full_disk)
    with pytest.raises(StateError, match="No space left"):
        await store.commit()
    monkeypatch.undo()
    await store.commit()
    assert FileStateStore(tmp_path).load().token == "t"


# -- the outbox files --------------------------------------------------------------------------


async def test_outbox_survives_restart_in_order(tmp_path: Path) -> None:
    """Committed events come back in order from a new FileOutbox on the same folder, after
    events of earlier commits; acked ones do not; staged ones die with the process."""
    first = FileOutbox(tmp_path)
    first.prepare()
    for n in range(3):
        first.put_event(event(n))
    await first.commit()
    second = FileOutbox(tmp_path)
    second.prepare()
    second.put_event(event(3))
    await second.commit()
    second.put_event(event(4))  # never committed
    items = second.pending(ItemKind.EVENT)
    assert [i.body["n"] for i in items] == [0, 1, 2, 3, 4]
    second.ack(items[:3])  # the first commit's file goes
    drain()
    third = FileOutbox(tmp_path)
    third.prepare()
    assert [i.body["n"] for i in third.pending(ItemKind.EVENT)] == [3]
    third.ack(third.pending(ItemKind.EVENT))
    drain()
    assert list(tmp_path.glob("*.jsonl")) == []


async def test_a_partly_acked_file_stays_until_its_last_item_is_acked(tmp_path: Path) -> None:
    """A file is removed once all its items were accepted; a restart before that sends its
    accepted items again (the server keeps each event id once)."""
    outbox = FileOutbox(tmp_path)
    outbox.prepare()
    for n in range(3):
        outbox.put_event(event(n))
    await outbox.commit()
    outbox.ack(outbox.pending(ItemKind.EVENT, limit=2))
    drain()
    assert [i.body["n"] for i in outbox.pending(ItemKind.EVENT)] == [2]
    restarted = FileOutbox(tmp_path)
    restarted.prepare()
    assert [i.body["n"] for i in restarted.pending(ItemKind.EVENT)] == [0, 1, 2]
    outbox.ack(outbox.pending(ItemKind.EVENT))
    drain()
    assert list(tmp_path.glob("*.jsonl")) == []


async def test_a_commit_is_one_file_and_one_fsync(tmp_path: Path, fsyncs: list[int]) -> None:
    """Fifty events and an inventory committed together: one segment file, written with one
    fsync of the file and one of the folder; acked, the file goes away. Nothing staged: no
    write at all."""
    outbox = FileOutbox(tmp_path)
    outbox.prepare()
    for n in range(50):
        outbox.put_event(event(n))
    outbox.put_inventory({"inventoryHash": "h"})
    await outbox.commit()
    await outbox.commit()
    assert outbox.writes == 1 and len(fsyncs) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["000000000000-batch.jsonl"]
    assert queued_events(tmp_path) == 50
    outbox.ack(outbox.pending(ItemKind.EVENT, limit=100))
    drain()
    assert list(tmp_path.iterdir()) != []  # the inventory is still queued in it
    outbox.ack(outbox.pending(ItemKind.INVENTORY))
    drain()
    assert list(tmp_path.iterdir()) == [] and len(fsyncs) == 2


async def test_commits_write_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a commit's write blocks (a slow disk), the event loop runs other tasks; the write
    happens on the writer thread. A commit cancelled meanwhile still completes on disk, and the
    outbox keeps track of the file it wrote."""
    release = threading.Event()
    writing = threading.Event()
    threads: list[str] = []
    real = files.write_atomic

    def slow(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        threads.append(threading.current_thread().name)
        writing.set()
        assert release.wait(SAFETY_S)
        real(path, data, mode=mode)

    monkeypatch.setattr("agent.runtime.outbox.write_atomic", slow)
    outbox = FileOutbox(tmp_path)
    outbox.prepare()
    outbox.put_event(event(0))
    async with asyncio.timeout(SAFETY_S):
        commit = asyncio.create_task(outbox.commit())
        await asyncio.to_thread(writing.wait, SAFETY_S)
        for _ in range(10):
            await asyncio.sleep(0)  # the loop runs on while the disk is busy
        assert not commit.done()
        commit.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await commit
    drain()
    assert threads == [threads[0]] and threads[0].startswith("midm-writer")
    assert threads[0] != threading.current_thread().name
    for _ in range(5):
        await asyncio.sleep(0)  # the write's bookkeeping (already scheduled) arrives on the loop
    assert queued_events(tmp_path) == 1
    outbox.ack(outbox.pending(ItemKind.EVENT))
    drain()
    assert list(tmp_path.glob("*.jsonl")) == []


async def test_a_failed_outbox_write_keeps_the_items_staged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that cannot write raises StateError; its items stay queued, in order, and the
    next commit writes them."""
    outbox = FileOutbox(tmp_path)
    outbox.prepare()
    outbox.put_event(event(0))

    def full_disk(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agent.runtime.outbox.write_atomic", full_disk)
    with pytest.raises(StateError, match="No space left"):
        await outbox.commit()
    outbox.put_event(event(1))
    monkeypatch.undo()
    await outbox.commit()
    assert [i.body["n"] for i in outbox.pending(ItemKind.EVENT)] == [0, 1]
    again = FileOutbox(tmp_path)
    again.prepare()
    assert [i.body["n"] for i in again.pending(ItemKind.EVENT)] == [0, 1]


def test_an_unreadable_old_file_is_quarantined(tmp_path: Path) -> None:
    """A damaged one-item file (earlier layout) is moved to bad/ with a warning; the queue
    keeps flowing."""
    (tmp_path / "000000000001-event-good.json").write_text(json.dumps(event(1)))
    (tmp_path / "000000000002-event-broken.json").write_text("{")
    outbox = FileOutbox(tmp_path)
    with capture_logs() as logs:
        outbox.prepare()
    assert [i.body["n"] for i in outbox.pending(ItemKind.EVENT)] == [1]
    assert (tmp_path / "bad" / "000000000002-event-broken.json").exists()
    assert [entry["event"] for entry in logs] == ["outbox.unreadable_item"]


async def test_an_unreadable_line_is_quarantined_and_its_neighbours_kept(tmp_path: Path) -> None:
    """A segment with a damaged line: a copy goes to bad/ with a warning naming the line; the
    readable items stay queued, in their place, also after a restart."""
    outbox = FileOutbox(tmp_path)
    outbox.prepare()
    for n in range(3):
        outbox.put_event(event(n))
    await outbox.commit()
    outbox.put_event(event(3))
    await outbox.commit()
    segment = tmp_path / "000000000000-batch.jsonl"
    lines = segment.read_bytes().splitlines()
    damaged = b"\n".join([lines[0], b'{"kind": "event", "bo', lines[2]]) + b"\n"
    segment.write_bytes(damaged)
    salvaged = FileOutbox(tmp_path)
    with capture_logs() as logs:
        salvaged.prepare()
    assert [i.body["n"] for i in salvaged.pending(ItemKind.EVENT)] == [0, 2, 3]
    assert (tmp_path / "bad" / segment.name).read_bytes() == damaged
    assert segment.read_bytes() == lines[0] + b"\n" + lines[2] + b"\n"
    assert logs[0]["event"] == "outbox.unreadable_item" and "line 2" in logs[0]["reason"]
    restarted = FileOutbox(tmp_path)
    restarted.prepare()
    assert [i.body["n"] for i in restarted.pending(ItemKind.EVENT)] == [0, 2, 3]


# -- upgrades ------------------------------------------------------------------------------------


def old_layout(state_dir: Path) -> list[str]:
    """A state dir as the previous version left it: state.json (indented, enrolled) and one
    file per item in outbox/, two inventories among three events. Returns the event ids."""
    state_dir.mkdir()
    outbox = state_dir / "outbox"
    outbox.mkdir()
    state = AgentState(serial="S1", device_uuid="d1", token="t1", registrations=1)
    (state_dir / "state.json").write_text(json.dumps(asdict(state), indent=2))
    ids = []
    for seq, kind in enumerate(["event", "inventory", "event", "inventory", "event"]):
        item_id = str(uuid.uuid4())
        if kind == "event":
            body: dict[str, Any] = {**event(seq), "id": item_id, "at": "2026-01-01T00:00:00.000Z"}
            ids.append(item_id)
        else:
            body = {"category": "all", "apps": [], "inventoryHash": f"h{seq}"}
        (outbox / f"{seq:012d}-{kind}-{item_id}.json").write_text(json.dumps(body))
    return ids


async def test_the_previous_layout_loads_and_drains(tmp_path: Path) -> None:
    """After an upgrade the outbox holds the old files' items in their order (the newer
    inventory only, the older one's file removed); new commits come after them; acked old
    files are removed; state.json loads as it was."""
    ids = old_layout(tmp_path / "state")
    folder = tmp_path / "state" / "outbox"
    assert queued_events(folder) == 3
    outbox = FileOutbox(folder)
    outbox.prepare()
    drain()
    assert [i.body["id"] for i in outbox.pending(ItemKind.EVENT)] == ids
    assert [i.body["inventoryHash"] for i in outbox.pending(ItemKind.INVENTORY)] == ["h3"]
    assert sorted(p.name[:12] for p in folder.iterdir()) == [f"{n:012d}" for n in (0, 2, 3, 4)]
    outbox.put_event(event(9))
    await outbox.commit()
    assert (folder / "000000000005-batch.jsonl").exists()
    outbox.ack(outbox.pending(ItemKind.EVENT, limit=2))
    drain()
    restarted = FileOutbox(folder)
    restarted.prepare()
    assert [i.body["id"] for i in restarted.pending(ItemKind.EVENT)] == [ids[2], event(9)["id"]]
    state = FileStateStore(tmp_path / "state").load()
    assert (state.serial, state.token, state.registrations) == ("S1", "t1", 1)


def envelope(data: Any = None) -> Response:
    body = {"uq": "u", "result": True, "code": 0, "message": "ok", "build": "t", "data": data}
    return Response(status=200, headers={}, body=json.dumps(body).encode())


def mock_agent(state_dir: Path, handler: Handler) -> Agent:
    return Agent(
        config=AgentConfig(
            server="http://mock", api_key="k", state_dir=state_dir, platform="simulated", push=False
        ),
        platform=sim_platform(),
        transport=MockTransport(handler),
        clock=FakeClock(),
        state_store=FileStateStore(state_dir),
        outbox=FileOutbox(state_dir / "outbox"),
        rng=random.Random(3),
    )


async def test_an_upgraded_agent_sends_what_the_old_one_queued(tmp_path: Path) -> None:
    """An agent started on the previous version's state dir is enrolled (no registration) and
    sends the queued events and the newest inventory; then nothing is left on disk."""
    ids = old_layout(tmp_path / "state")
    sent: list[Request] = []

    async def server(request: Request) -> Response:
        sent.append(request)
        return envelope()

    agent = mock_agent(tmp_path / "state", server)
    async with asyncio.timeout(SAFETY_S):
        await agent.flush()
    assert [r.name for r in sent] == ["apps", "events"]
    assert isinstance(sent[1].body, list) and [e["id"] for e in sent[1].body] == ids
    drain()
    assert queued_events(tmp_path / "state" / "outbox") == 0
    assert not list((tmp_path / "state" / "outbox").glob("*.json*"))


# -- the agent: idle check-ins write nothing -----------------------------------------------------


async def test_idle_checkins_write_nothing(tmp_path: Path, fsyncs: list[int]) -> None:
    """Check-ins that change nothing but the check-in time make no write and no fsync; a stop
    writes the bookkeeping once."""
    answers = {
        "register": {"deviceUuid": "d1", "token": "t1"},
        "checkin": {"nextCheckinSeconds": 300, "profiles": []},
        "profiles": [],
    }

    async def server(request: Request) -> Response:
        return envelope(answers.get(request.name))

    agent = mock_agent(tmp_path, server)
    assert isinstance(agent.state_store, FileStateStore)
    assert isinstance(agent.outbox, FileOutbox)
    assert isinstance(agent.clock, FakeClock)
    async with asyncio.timeout(SAFETY_S):
        await agent.cycle()  # enrolls and reports the inventory: writes
        await agent.commit()  # the reported inventory (staged after the answer)
        before = (agent.state_store.writes, agent.outbox.writes, len(fsyncs))
        for _ in range(5):
            agent.clock.advance(300)
            await agent.cycle()
        assert (agent.state_store.writes, agent.outbox.writes, len(fsyncs)) == before
        await agent.commit(full=True)
    assert agent.state_store.writes == before[0] + 1
    assert FileStateStore(tmp_path).load().last_checkin == 1_790_000_000_000 + 1_500_000


# -- configuration -------------------------------------------------------------------------------


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
