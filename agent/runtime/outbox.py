"""The durable outbox: every event and report is written to disk before it is sent, and removed
only after the server accepted it.

Theory of operation: one file per item in `<state dir>/outbox/`, named `<seq>-<kind>-<id>.json`
and written atomically (temp, fsync, rename, fsync folder), so after `kill -9` an item is either
whole or absent. Events carry a client-made uuid, so a batch resent after a crash (sent, but
the answer lost) is stored once by the server. An inventory report replaces any older queued
one (only the newest inventory matters). Unreadable files are moved to `outbox/bad/` with a
warning instead of blocking the queue.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.errors import StateError
from agent.runtime.files import sync_dir, write_atomic

log = structlog.get_logger("agent.outbox")


@dataclass(frozen=True, slots=True)
class Item:
    path: Path
    kind: str  # "event" or "inventory"
    body: dict[str, Any]


class Outbox:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seq = itertools.count()

    def prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot create outbox {self.folder}: {exc.strerror}") from exc
        last = max((self._sequence(p) for p in self.folder.glob("*.json")), default=-1)
        self._seq = itertools.count(last + 1)

    @staticmethod
    def _sequence(path: Path) -> int:
        try:
            return int(path.name.split("-", 1)[0])
        except ValueError:
            return -1

    def put_event(self, event: dict[str, Any]) -> str:
        """Queue one event (a uuid `id` is added when missing); returns the id."""
        event = dict(event)
        event.setdefault("id", str(uuid.uuid4()))
        self._write("event", event["id"], event)
        return str(event["id"])

    def put_inventory(self, report: dict[str, Any]) -> None:
        for old in self.folder.glob("*-inventory-*.json"):
            old.unlink(missing_ok=True)
        self._write("inventory", str(uuid.uuid4()), report)

    def _write(self, kind: str, item_id: str, body: dict[str, Any]) -> None:
        path = self.folder / f"{next(self._seq):012d}-{kind}-{item_id}.json"
        try:
            write_atomic(path, json.dumps(body).encode())
        except OSError as exc:
            raise StateError(f"cannot write to the outbox {self.folder}: {exc.strerror}") from exc

    def pending(self, kind: str | None = None, limit: int = 1000) -> list[Item]:
        items = []
        for path in sorted(self.folder.glob("*.json")):
            parts = path.stem.split("-", 2)
            if len(parts) != 3 or (kind is not None and parts[1] != kind):
                continue
            try:
                body = json.loads(path.read_bytes())
            except (OSError, json.JSONDecodeError) as exc:
                self._quarantine(path, str(exc))
                continue
            items.append(Item(path, parts[1], body))
            if len(items) >= limit:
                break
        return items

    def count(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))

    def ack(self, items: list[Item]) -> None:
        for item in items:
            item.path.unlink(missing_ok=True)
        if items:
            sync_dir(self.folder)

    def _quarantine(self, path: Path, reason: str) -> None:
        bad = self.folder / "bad"
        bad.mkdir(exist_ok=True)
        path.replace(bad / path.name)
        log.warning("outbox.unreadable_item", path=str(path), reason=reason)
