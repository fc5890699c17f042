"""The agent's durable state (`<state dir>/state.json`, mode 0600): enrollment and last check-in.

Written atomically after every change that matters (registration, check-in outcome); a corrupt
file is a StateError naming it (the agent does not guess a device identity).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.runtime.files import write_atomic

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


class StateStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / STATE_FILE

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
            values = json.loads(raw)
            known = {k: v for k, v in values.items() if k in AgentState.__dataclass_fields__}
            return AgentState(**known)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise StateError(
                f"{self.path} is corrupt ({exc}); move it away to enroll this device again"
            ) from exc

    def save(self, state: AgentState) -> None:
        try:
            write_atomic(self.path, json.dumps(asdict(state), indent=2).encode())
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror}") from exc
