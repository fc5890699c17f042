"""The agent's state, the `StateStore` seam, and its file implementation (`state.json`, 0600).

Theory of operation: `save(state)` only stages (it is cheap and synchronous, called after every
change); `await commit()` makes it durable, and the agent commits before it sends anything and
before an irreversible platform action (install, apply an image, reboot). A commit writes only
when a durable field changed: everything but the check-in bookkeeping (`last_checkin`,
`last_checkin_error`, `next_checkin_s`), which rides along with the next real write and is
written at stop (`commit(full=True)`), so an idle check-in writes nothing. The write (temp file,
fsync, rename, fsync the folder) runs on the writer thread, off the event loop. A corrupt file
is a StateError naming it (the agent does not guess a device identity). `state.json` keeps the
layout of earlier versions, which load as they are.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from agent.errors import StateError
from agent.runtime.files import submit, write_atomic

STATE_FILE = "state.json"


@dataclass(slots=True, kw_only=True)
class AgentState:
    serial: str = ""
    device_uuid: str = ""
    token: str = ""
    registered_at: int | None = None
    registrations: int = 0
    last_checkin: int | None = None
    last_checkin_error: str = ""
    next_checkin_s: float | None = None
    reported_inventory_hash: str = ""
    profiles: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)  # per profile, persisted
    pending_boot: dict[str, Any] = field(default_factory=dict)  # an image waiting for its boot

    @property
    def enrolled(self) -> bool:
        return bool(self.token)


BOOKKEEPING = frozenset({"last_checkin", "last_checkin_error", "next_checkin_s"})
DURABLE = tuple(f.name for f in fields(AgentState) if f.name not in BOOKKEEPING)


def durable_key(state: AgentState) -> str:
    """The durable fields as one string: a commit writes when (and only when) it changed."""
    return json.dumps(
        [getattr(state, name) for name in DURABLE], separators=(",", ":"), sort_keys=True
    )


def encode(state: AgentState) -> bytes:
    return json.dumps(asdict(state), indent=2).encode()


def decode(raw: bytes) -> AgentState:
    """`state.json` as this or an earlier version wrote it (unknown keys are ignored)."""
    values = json.loads(raw)
    known = {k: v for k, v in values.items() if k in AgentState.__dataclass_fields__}
    return AgentState(**known)


class StateStore(Protocol):
    """Where the agent keeps its state: files on a rig, memory in the simulator."""

    def prepare(self) -> None:
        """Make the store usable (create its folder); StateError if it cannot."""
        ...

    def load(self) -> AgentState:
        """The last committed state, or a fresh one."""
        ...

    def save(self, state: AgentState) -> None:
        """Stage `state` (cheap, synchronous); the next `commit()` makes it durable."""
        ...

    async def commit(self, *, full: bool = False) -> None:
        """Make the staged state durable if a durable field changed (`full`: if any field did);
        StateError if it cannot be written."""
        ...


class FileStateStore:
    """`<folder>/state.json`, written off the loop and only when a durable field changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / STATE_FILE
        self._staged: AgentState | None = None
        self._dirty = False  # saved since the last commit looked
        self._written_key: str | None = None  # durable_key of what the file holds (None: unknown)
        self._written_full: bytes | None = None
        self.writes = 0  # commits that wrote (tests and benches read it)

    def prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot create state dir {self.folder}: {exc.strerror}") from exc

    def load(self) -> AgentState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            state = decode(raw)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise StateError(
                f"{self.path} is corrupt ({exc}); move it away to enroll this device again"
            ) from exc
        self._written_key, self._written_full = durable_key(state), encode(state)
        return state

    def save(self, state: AgentState) -> None:
        self._staged = state
        self._dirty = True

    async def commit(self, *, full: bool = False) -> None:
        state = self._staged
        if state is None or not (self._dirty or full):
            return
        self._dirty = False
        key = durable_key(state)
        if key == self._written_key and not full:
            return  # only the check-in bookkeeping changed: it rides on the next write
        data = encode(state)
        if key == self._written_key and data == self._written_full:
            return
        self._written_key, self._written_full = key, data
        self.writes += 1
        job = submit(lambda: self._write(data))
        job.add_done_callback(self._written)
        await asyncio.shield(job)

    def _write(self, data: bytes) -> None:  # on the writer thread
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror}") from exc

    def _written(self, job: asyncio.Future[None]) -> None:
        if job.cancelled() or job.exception() is not None:  # unknown on disk: write next time
            self._written_key = self._written_full = None
            self._dirty = True
