"""Persistence in memory, for simulated devices: no file system, a few slotted objects per agent.

`MemoryStateStore` holds the agent's own state object and `MemoryOutbox` the queue; `commit()`
has nothing to do. A new Agent on the same stores (a simulated restart) finds the state and the
queue as the previous one left them, committed or not: a simulated device does not lose power.
"""

from __future__ import annotations

from agent.runtime.outbox import ItemQueue
from agent.runtime.state import AgentState


class MemoryStateStore:
    __slots__ = ("_state",)

    def __init__(self, state: AgentState | None = None) -> None:
        self._state = state

    def prepare(self) -> None:
        return None

    def load(self) -> AgentState:
        if self._state is None:
            self._state = AgentState()
        return self._state

    def save(self, state: AgentState) -> None:
        self._state = state

    async def commit(self, *, full: bool = False) -> None:
        return None


class MemoryOutbox(ItemQueue):
    __slots__ = ()

    def prepare(self) -> None:
        return None

    async def commit(self) -> None:
        return None
