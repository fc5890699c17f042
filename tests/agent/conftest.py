"""Agent tests: every transport a test opened is closed after it, pass or fail."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.agent.agent_harness import OPEN


@pytest.fixture(autouse=True)
async def close_transports() -> AsyncIterator[None]:
    yield
    while OPEN:
        await OPEN.pop().close()
