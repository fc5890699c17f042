"""A real agent process for the crash test: `python -m tests.agent.crash_agent BASE STATE MODE N`.

MODE `queue`: enroll, queue N events and commit them (as the agent does before it sends), say
"queued", then wait to be killed (before sending). MODE `sent`: enroll, queue N events, flush
(which commits, then sends); when the server has accepted the batch and before the outbox is
cleared, say "sent" and wait to be killed. MODE `flush`: check in and flush.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from tests.agent.agent_harness import make_agent


def say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


async def main(base: str, state: Path, mode: str, count: int) -> None:
    agent, transport = make_agent(base, state)
    try:
        if mode == "flush":
            await agent.run_once()
            say(f"done {agent.outbox.count()}")
            return
        await agent.ensure_enrolled()
        for i in range(count):
            agent.queue_event({"kind": "settings", "status": "applied", "target": f"s{i}"})
        if mode == "queue":
            await agent.commit()
            say("queued")
            time.sleep(3600)  # killed here, before anything was sent

        def hang(items: object) -> None:
            say("sent")
            time.sleep(3600)  # killed here: the server has the events, the outbox still too

        agent.outbox.ack = hang  # type: ignore[method-assign]
        await agent.flush()
    finally:
        await transport.close()


if __name__ == "__main__":
    from midm_common.logsetup import configure_logging

    configure_logging("warning")  # logs to stderr; stdout carries the test's words
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
