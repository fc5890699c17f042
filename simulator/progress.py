"""Live progress of a run: a rich panel on a terminal, plain lines otherwise (or --no-progress).

The display reads only snapshots: a `source()` returning `Figures` (built by `figures()` from the
metrics' LiveStatistics and the fleet's count of devices up). `tick()` shows one update (tests
call it directly); `run(stop, clock)` ticks every `interval_s` until `stop` is set. Plain mode
prints a line at most every `plain_every_s` seconds of the run, and always on the last tick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.clock import Clock, Waitable
from simulator.metrics import LiveStatistics


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    elapsed_s: float
    duration_s: float
    devices_up: int
    devices_planned: int
    requests: int
    errors: int
    rps: int
    p99_ms: float | None
    websockets: int
    send_lag_p99_ms: float | None
    saturated: bool
    convergence: tuple[tuple[str, int, int], ...]  # (profile, applied, devices reporting it)


def figures(
    stats: LiveStatistics, *, devices_up: int, devices_planned: int, duration_s: float
) -> Figures:
    return Figures(
        elapsed_s=stats.elapsed_s,
        duration_s=duration_s,
        devices_up=devices_up,
        devices_planned=devices_planned,
        requests=stats.requests,
        errors=stats.errors,
        rps=stats.rps,
        p99_ms=stats.p99_ms,
        websockets=stats.websockets,
        send_lag_p99_ms=stats.send_lag_p99_ms,
        saturated=stats.saturated,
        convergence=stats.convergence,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _rate(errors: int, requests: int) -> str:
    return f"{100 * errors / requests:.2f}%" if requests else "0%"


def plain_line(f: Figures) -> str:
    """One line of progress (no colours, no terminal needed)."""
    parts = [
        f"t={f.elapsed_s:.0f}/{f.duration_s:.0f}s",
        f"devices {f.devices_up}/{f.devices_planned}",
        f"req/s {f.rps}",
        f"p99 {_ms(f.p99_ms)}",
        f"errors {f.errors} ({_rate(f.errors, f.requests)})",
        f"ws {f.websockets}",
    ]
    parts.extend(f"{name} {applied}/{seen} applied" for name, applied, seen in f.convergence)
    if f.saturated:
        parts.append(f"SATURATED (send lag p99 {_ms(f.send_lag_p99_ms)})")
    return "  ".join(parts)


def panel(f: Figures) -> Table:
    """The live panel: one row of figures, then one row per profile's convergence."""
    table = Table(title=f"midm-sim  {f.elapsed_s:.0f} / {f.duration_s:.0f} s", title_justify="left")
    for column in ("devices up", "req/s", "p99", "errors", "websockets", "send lag p99"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{f.devices_up:,} / {f.devices_planned:,}",
        f"{f.rps:,}",
        _ms(f.p99_ms),
        f"{f.errors:,} ({_rate(f.errors, f.requests)})",
        f"{f.websockets:,}",
        ("[bold red]" if f.saturated else "") + _ms(f.send_lag_p99_ms),
    )
    for name, applied, seen in f.convergence:
        table.add_row(f"[bold]{name}[/bold]", f"{applied:,} applied", f"of {seen:,} reporting")
    if f.saturated:
        table.caption = "[bold red]SATURATED: latencies are not trustworthy[/bold red]"
    return table


class ProgressDisplay:
    """A context manager around the display; `live` None: live when the console is a terminal."""

    def __init__(
        self,
        source: Callable[[], Figures],
        *,
        console: Console | None = None,
        live: bool | None = None,
        plain_every_s: float = 5.0,
    ) -> None:
        self.source = source
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.plain_every_s = plain_every_s
        self._live: Live | None = None
        self._printed_at: float | None = None

    def __enter__(self) -> Self:
        if self.live:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def tick(self, *, final: bool = False) -> Figures:
        """Show the figures now (plain: when a line is due, or `final`)."""
        f = self.source()
        if self._live is not None:
            self._live.update(panel(f), refresh=True)
        elif (
            final
            or self._printed_at is None
            or f.elapsed_s - self._printed_at >= self.plain_every_s
        ):
            self.console.print(plain_line(f), highlight=False, markup=False, soft_wrap=True)
            self._printed_at = f.elapsed_s
        return f

    async def run(self, stop: Waitable, clock: Clock, interval_s: float = 1.0) -> None:
        """Tick every `interval_s` on `clock` until `stop` is set, then once more."""
        while not await clock.wait_for(stop, interval_s):
            self.tick()
        self.tick(final=True)
