"""Live progress: a rich panel on a terminal, plain lines (rate-limited) otherwise."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from agent.clock import FakeClock, Flag
from simulator.metrics import LiveStatistics
from simulator.progress import Figures, ProgressDisplay, figures, panel, plain_line


def stats(elapsed: float = 12.0, *, saturated: bool = False) -> LiveStatistics:
    return LiveStatistics(
        elapsed_s=elapsed,
        requests=2000,
        errors=3,
        rps=140,
        p99_ms=3.25,
        websockets=800,
        send_lag_p99_ms=14.0 if saturated else 0.4,
        saturated=saturated,
        convergence=(("rollout", 412, 900),),
    )


def sample(elapsed: float = 12.0, *, saturated: bool = False) -> Figures:
    return figures(
        stats(elapsed, saturated=saturated), devices_up=812, devices_planned=1000, duration_s=60
    )


def test_a_plain_line_has_every_figure() -> None:
    """Devices up, req/s, p99, errors, sockets and convergence on one line."""
    assert plain_line(sample()) == (
        "t=12/60s  devices 812/1000  req/s 140  p99 3.2 ms  errors 3 (0.15%)  ws 800  "
        "rollout 412/900 applied"
    )
    assert plain_line(sample(saturated=True)).endswith("SATURATED (send lag p99 14.0 ms)")


def test_the_panel_renders() -> None:
    console = Console(record=True, width=120, force_terminal=True)
    console.print(panel(sample(saturated=True)))
    text = console.export_text()
    assert "812 / 1,000" in text and "rollout" in text and "412 applied" in text
    assert "not trustworthy" in text


def test_plain_lines_come_at_most_every_interval_and_on_the_last_tick() -> None:
    """Off a terminal (or --no-progress) the display prints lines, not a live panel."""
    out = io.StringIO()
    times = iter([0.0, 2.0, 5.0, 6.0, 7.0])
    display = ProgressDisplay(
        lambda: sample(next(times)), console=Console(file=out, width=300), plain_every_s=5.0
    )
    assert display.live is False
    with display:
        display.tick()
        display.tick()
        display.tick()
        display.tick()
        display.tick(final=True)
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["t=0/60s", "t=5/60s", "t=7/60s"]


def test_live_mode_updates_a_panel_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with ProgressDisplay(sample, console=console) as display:
        assert display.live is True
        display.tick()
    assert "req/s" in out.getvalue()
    plain = ProgressDisplay(sample, console=console, live=False)  # --no-progress
    assert plain.live is False


async def test_run_ticks_on_the_clock_until_stopped() -> None:
    """One tick per interval of the given clock, and a last one after the stop."""
    clock = FakeClock(autojump_threshold=0)
    stop = Flag()
    calls: list[float] = []

    def source() -> Figures:
        calls.append(clock.monotonic())
        if len(calls) == 3:
            stop.set()
        return sample(float(len(calls)))

    out = io.StringIO()
    display = ProgressDisplay(source, console=Console(file=out), plain_every_s=0)
    await asyncio.wait_for(display.run(stop, clock, interval_s=2.0), timeout=30)
    assert len(calls) == 4  # three ticks, the last one after the stop
    assert calls[:3] == [calls[0], calls[0] + 2.0, calls[0] + 4.0]
    assert len(out.getvalue().splitlines()) == 4
