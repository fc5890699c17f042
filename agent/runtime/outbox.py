"""The outbox: every event and inventory report waits here until the server accepted it.

Theory of operation: `put_event` and `put_inventory` stage an item in memory; `await commit()`
makes every staged item durable at once, and the agent commits before it sends anything and
before an irreversible platform action, so what the server may have seen is on disk first. An
item is removed (`ack`) only once the server accepted it. Events carry an id the agent made, so
a batch resent after a crash (sent, but the answer lost) is stored once by the server. A newer
inventory report replaces a queued older one (only the newest inventory matters).

`FileOutbox` (`<state dir>/outbox/`): a commit writes all its items into one segment file,
`<seq>-batch.jsonl` (one `{"kind", "body"}` per line), atomically and on the writer thread, off
the loop: one file and one fsync (plus the folder's) for a whole flush or step. A segment is
unlinked, without waiting, once none of its items is pending; should a crash undo that, the
items are sent again and the server keeps them once. Files of earlier versions (one item per
file, `<seq>-<kind>-<id>.json`) load as segments of one item. An unreadable file or line is
moved to `outbox/bad/` with a warning (a segment's readable lines stay queued, in place) and
the queue keeps flowing.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.errors import StateError
from agent.runtime.files import in_background, submit, write_atomic

log = structlog.get_logger("agent.outbox")


class ItemKind(enum.StrEnum):
    EVENT = "event"
    INVENTORY = "inventory"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Item:
    seq: int  # the order it was queued in (per outbox)
    kind: ItemKind
    body: dict[str, Any]


class Outbox(Protocol):
    """Where events and reports wait for the server: files on a rig, memory in the simulator."""

    def prepare(self) -> None:
        """Make the outbox usable (create its folder, load what it holds); StateError if not."""
        ...

    def put_event(self, event: dict[str, Any]) -> str:
        """Stage an event (it carries its `id`; the outbox keeps the dict); returns the id."""
        ...

    def put_inventory(self, report: dict[str, Any]) -> None:
        """Stage an inventory report in place of any queued one."""
        ...

    def pending(self, kind: ItemKind, limit: int = 1000) -> list[Item]:
        """Up to `limit` queued items of `kind`, oldest first (staged ones included)."""
        ...

    def count(self) -> int: ...

    def ack(self, items: Sequence[Item]) -> None:
        """The server accepted `items`: forget them."""
        ...

    async def commit(self) -> None:
        """Make every staged item durable (one write); StateError if it cannot."""
        ...


class ItemQueue:
    """The in-memory queue both outboxes keep: events in order, and at most one inventory."""

    __slots__ = ("_events", "_inventory", "_next")

    def __init__(self) -> None:
        self._events: dict[int, Item] = {}
        self._inventory: Item | None = None
        self._next = 0

    def _add(self, kind: ItemKind, body: dict[str, Any]) -> Item:
        item = Item(seq=self._next, kind=kind, body=body)
        self._next += 1
        if kind is ItemKind.EVENT:
            self._events[item.seq] = item
        else:
            if self._inventory is not None:
                self._forget(self._inventory)
            self._inventory = item
        return item

    def _holds(self, item: Item) -> bool:
        if item.kind is ItemKind.EVENT:
            return item.seq in self._events
        return self._inventory is not None and self._inventory.seq == item.seq

    def _forget(self, item: Item) -> None:
        """An item left the queue (acked or replaced); a file outbox releases its segment."""

    def put_event(self, event: dict[str, Any]) -> str:
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("an event needs its id (the agent makes one from its rng)")
        self._add(ItemKind.EVENT, event)
        return event_id

    def put_inventory(self, report: dict[str, Any]) -> None:
        self._add(ItemKind.INVENTORY, report)

    def pending(self, kind: ItemKind, limit: int = 1000) -> list[Item]:
        if kind == ItemKind.INVENTORY:
            return [self._inventory] if self._inventory is not None and limit > 0 else []
        return list(islice(self._events.values(), limit))

    def count(self) -> int:
        return len(self._events) + (self._inventory is not None)

    def ack(self, items: Sequence[Item]) -> None:
        for item in items:
            if item.kind is ItemKind.EVENT:
                if self._events.pop(item.seq, None) is not None:
                    self._forget(item)
            elif self._holds(item):
                self._inventory = None
                self._forget(item)


# -- the file outbox -------------------------------------------------------------------------

SEGMENT = re.compile(r"(\d+)-batch\.jsonl")
SINGLE = re.compile(r"(\d+)-(event|inventory)-.+\.json")  # one item per file (earlier versions)


def _segments(folder: Path) -> Iterator[tuple[int, Path]]:
    """(seq, path) of every outbox file in `folder`, in queue order."""
    found = []
    for path in folder.iterdir():
        match = SEGMENT.fullmatch(path.name) or SINGLE.fullmatch(path.name)
        if match is not None and path.is_file():
            found.append((int(match.group(1)), path))
    return iter(sorted(found))


def _read(path: Path) -> tuple[list[tuple[ItemKind, dict[str, Any]]], list[str]]:
    """The items in one outbox file, and why any part of it could not be read."""
    raw = path.read_bytes()
    single = SINGLE.fullmatch(path.name)
    texts = [raw] if single is not None else [line for line in raw.splitlines() if line.strip()]
    items: list[tuple[ItemKind, dict[str, Any]]] = []
    problems: list[str] = []
    for number, text in enumerate(texts, 1):
        try:
            value = json.loads(text)
            if single is not None:
                kind, body = ItemKind(single.group(2)), value
            else:
                kind, body = ItemKind(value["kind"]), value["body"]
            if not isinstance(body, dict):
                raise TypeError(f"{type(body).__name__}, not an object")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"line {number}: {exc!r}" if single is None else repr(exc))
            continue
        items.append((kind, body))
    return items, problems


def _encode(items: Sequence[Item]) -> bytes:
    return b"".join(
        json.dumps({"kind": str(i.kind), "body": i.body}, separators=(",", ":")).encode() + b"\n"
        for i in items
    )


def queued_events(folder: Path) -> int:
    """How many events the outbox in `folder` holds, read without changing anything
    (`midm-agent status`); unreadable files and lines are not counted."""
    if not folder.is_dir():
        return 0
    total = 0
    for _, path in _segments(folder):
        try:
            items, _ = _read(path)
        except OSError:
            continue
        total += sum(1 for kind, _ in items if kind is ItemKind.EVENT)
    return total


class FileOutbox(ItemQueue):
    """The outbox in `folder`: segment files written off the loop, one per commit."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self._unwritten: list[Item] = []  # staged: in memory only
        self._segment_of: dict[int, str] = {}  # item seq -> the file that holds it
        self._live: dict[str, int] = {}  # file -> how many of its items are still queued
        self._next_file = 0
        self.writes = 0  # segment files written (tests and benches read it)

    def prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            for temp in self.folder.glob(".*.tmp"):  # a write that a crash cut short
                temp.unlink(missing_ok=True)
            found = list(_segments(self.folder))
            self._next_file = max((seq + 1 for seq, _ in found), default=0)
            for _, path in found:
                self._load(path)
            self._unwritten.clear()  # everything loaded is on disk
        except OSError as exc:
            raise StateError(f"cannot use the outbox {self.folder}: {exc.strerror}") from exc

    def _load(self, path: Path) -> None:
        try:
            found, problems = _read(path)
        except OSError as exc:
            found, problems = [], [exc.strerror or str(exc)]
        if problems and not found:
            self._quarantine(path, "; ".join(problems))
            return
        items = [self._add(kind, body) for kind, body in found]
        if problems:  # a copy goes aside, the readable lines stay in place (and in order)
            bad = self.folder / "bad"
            bad.mkdir(exist_ok=True)
            write_atomic(bad / path.name, path.read_bytes())
            write_atomic(path, _encode(items))
            log.warning("outbox.unreadable_item", path=str(path), reason="; ".join(problems))
        self._adopt(path.name, items)

    def _adopt(self, name: str, items: Sequence[Item]) -> None:
        live = [item for item in items if self._holds(item)]
        for item in live:
            self._segment_of[item.seq] = name
        if live:
            self._live[name] = len(live)
        else:
            self._unlink(name)

    def _quarantine(self, path: Path, reason: str) -> None:
        bad = self.folder / "bad"
        bad.mkdir(exist_ok=True)
        path.replace(bad / path.name)
        log.warning("outbox.unreadable_item", path=str(path), reason=reason)

    def _new_name(self) -> str:
        name = f"{self._next_file:012d}-batch.jsonl"
        self._next_file += 1
        return name

    def _add(self, kind: ItemKind, body: dict[str, Any]) -> Item:
        item = super()._add(kind, body)
        self._unwritten.append(item)
        return item

    def _forget(self, item: Item) -> None:
        name = self._segment_of.pop(item.seq, None)
        if name is None:  # staged (or being written): it just does not get written
            self._unwritten = [i for i in self._unwritten if i.seq != item.seq]
            return
        self._live[name] -= 1
        if not self._live[name]:
            del self._live[name]
            self._unlink(name)

    def _unlink(self, name: str) -> None:
        path = self.folder / name
        in_background(lambda: path.unlink(missing_ok=True), f"unlink {path}")

    async def commit(self) -> None:
        if not self._unwritten:
            return
        batch, self._unwritten = self._unwritten, []
        name = self._new_name()
        self.writes += 1
        job = submit(lambda: self._write(name, batch))
        job.add_done_callback(lambda done: self._written(done, name, batch))
        await asyncio.shield(job)

    def _write(self, name: str, batch: list[Item]) -> None:  # on the writer thread
        try:
            write_atomic(self.folder / name, _encode(batch))  # the bodies were handed over
        except OSError as exc:
            raise StateError(f"cannot write to the outbox {self.folder}: {exc.strerror}") from exc

    def _written(self, job: asyncio.Future[None], name: str, batch: list[Item]) -> None:
        if job.cancelled() or job.exception() is not None:  # staged again, in queue order
            self._unwritten = sorted(
                [i for i in batch if self._holds(i)] + self._unwritten, key=lambda i: i.seq
            )
            return
        self._adopt(name, batch)
