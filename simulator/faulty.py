"""The transport that carries out a scenario's faults (simulator.plan.faults) for one device.

`FaultyTransport` wraps the device's real transport (the same `Transport` seam every agent
uses): before each request it asks the pure `verdict()` what the faults acting now on its kind
and on that request do, and then waits, refuses, answers with an error status, lets the target
answer and loses the answer, cuts a download part-way, or slows a download to a bandwidth. The
agent above it is the real one and sees what it would see on a bad network: TransportErrors,
error envelopes with Retry-After, incomplete downloads it must resume.

What the observer (the run's metrics) hears: a request the fault refuses or answers is reported
as the exchange the agent lived (status 0 and the error, or the fault's status), so the
report's errors count it; a request that reaches the target is reported by the real transport
as usual, from its intended time, so a `latency` fault's wait counts in the measured latency
(a request with no intended time is given the moment it was meant to leave). A download's
measured time starts when it leaves: its `latency` wait shows in the agents' progress, not in
`requests.file`.

Decisions [ours]: a cut download is fetched whole from the target (the bytes past the cut are
thrown away) so that the target serves a real download and the cut lands at an exact fraction
of the file; the part before the cut stays in the device's sink, so its next attempt asks for
the rest with Range. Bandwidth is applied to the download as a whole (it takes at least its
size / bytes_per_s), not chunk by chunk.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from agent.clock import Clock, ScaledClock
from agent.core.rng import RandomSource
from agent.errors import TransportError
from agent.protocol import Request, Response
from agent.transport.base import Download, Observer, PushChannel, Sink, Transport, report
from simulator.plan.faults import (
    DOWNLOAD,
    PUSH,
    Fault,
    Verdict,
    acting,
    clock_offset,
    error_body,
    verdict,
)


class JumpingClock(ScaledClock):
    """A kind's clock whose wall time is off by its skew plus the clock jumps its faults made
    by now (scenario time `now_s()`); monotonic time and waits are the fleet clock's
    (inherited: they only use `rate`)."""

    def __init__(
        self,
        base: ScaledClock,
        *,
        skew_s: float,
        kind: str,
        faults: Sequence[Fault],
        now_s: Callable[[], float],
    ) -> None:  # no super(): reads `base`
        self.rate = base.rate
        self._base, self._skew_s, self._kind = base, skew_s, kind
        self._faults, self._now_s = tuple(faults), now_s

    def now_ms(self) -> int:
        jumped = clock_offset(self._faults, self._kind, self._now_s())
        return self._base.now_ms() + round((self._skew_s + jumped) * 1000)

    def monotonic(self) -> float:
        return self._base.monotonic()


class _Held:
    """A sink in front of the device's sink: what the target sends is held here, so that a cut
    can hand the device an exact part of it."""

    __slots__ = ("chunks", "inner", "truncated")

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.chunks: list[bytes] = []
        self.truncated = False

    @property
    def size(self) -> int:
        return self.inner.size + sum(len(c) for c in self.chunks)

    def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))

    def truncate(self) -> None:
        self.truncated = True
        self.chunks.clear()


class FaultyTransport:
    """A device's transport with its kind's faults (see the module docstring)."""

    __slots__ = ("channels", "clock", "faults", "inner", "kind", "now_s", "observer", "rng")

    def __init__(
        self,
        inner: Transport,
        *,
        kind: str,
        faults: Sequence[Fault],
        now_s: Callable[[], float],
        clock: Clock,
        rng: RandomSource,
        observer: Observer,
        channels: set[PushChannel] | None = None,
    ) -> None:
        self.inner, self.kind, self.faults = inner, kind, faults
        self.now_s, self.clock, self.rng, self.observer = now_s, clock, rng, observer
        self.channels = channels  # the kind's open push channels (an outage closes them)

    def _verdict(self, endpoint: str) -> Verdict:
        hits = acting(self.faults, self.kind, endpoint, self.now_s())
        return verdict(hits, endpoint, self.rng.random) if hits else Verdict()

    async def _before(self, name: str, verdict: Verdict, intended: float | None) -> None:
        """Wait the fault's latency; refuse as a closed port would (reported, then raised)."""
        if verdict.delay_s > 0:
            await self.clock.sleep(verdict.delay_s)
        if verdict.refuse is not None:
            started = self.clock.monotonic()
            report(
                self.observer,
                self.clock,
                name=name,
                intended=intended,
                started=started,
                status=0,
                error="ConnectionRefused",
            )
            raise TransportError(f"{name}: {verdict.refuse}")

    async def send(self, request: Request) -> Response:
        name = request.name or request.path
        decided = self._verdict(name)
        if decided.passes:
            return await self.inner.send(request)
        if request.intended is None and decided.delay_s > 0:
            # the request was meant to leave now: the fault's wait counts in its latency
            request = replace(request, intended=self.clock.monotonic())
        await self._before(name, decided, request.intended)
        if decided.status is not None:
            headers = {"Content-Type": "application/json"}
            if decided.retry_after_s is not None:
                headers["Retry-After"] = f"{decided.retry_after_s:g}"
            report(
                self.observer,
                self.clock,
                name=name,
                intended=request.intended,
                started=self.clock.monotonic(),
                status=decided.status,
                error=None,
            )
            return Response(
                status=decided.status,
                body=error_body(decided.status, decided.retry_after_s),
                headers=headers,
            )
        answer = await self.inner.send(request)
        if decided.drop_answer is not None:
            raise TransportError(f"{name}: {decided.drop_answer} before the answer arrived")
        return answer

    async def download(
        self, path: str, headers: Mapping[str, str], target: Path, offset: int
    ) -> Download:
        decided = self._verdict(DOWNLOAD)
        if decided.passes:
            return await self.inner.download(path, headers, target, offset)
        await self._before(DOWNLOAD, decided, None)
        if decided.status is not None:
            raise TransportError(f"download {path}: HTTP {decided.status} (simulated fault)")
        result = await self.inner.download(path, headers, target, offset)
        if decided.cut_at is not None:
            total = await asyncio.to_thread(lambda: target.stat().st_size)
            cut = int(total * decided.cut_at)
            if offset < cut < total:
                await asyncio.to_thread(os.truncate, target, cut)
                raise TransportError(
                    f"download {path}: connection closed after {cut} of {total} bytes "
                    "(simulated fault)"
                )
        if decided.drop_answer is not None:
            raise TransportError(f"download {path}: {decided.drop_answer}")
        return result

    async def download_to(self, path: str, headers: Mapping[str, str], sink: Sink) -> Download:
        decided = self._verdict(DOWNLOAD)
        if decided.passes:
            return await self.inner.download_to(path, headers, sink)
        started = self.clock.monotonic()
        await self._before(DOWNLOAD, decided, None)
        if decided.status is not None:
            raise TransportError(f"download {path}: HTTP {decided.status} (simulated fault)")
        if decided.cut_at is None:
            result = await self.inner.download_to(path, headers, sink)
        else:
            result = await self._cut(path, headers, sink, decided.cut_at)
        if decided.bytes_per_s:
            left = sink.size / decided.bytes_per_s - (self.clock.monotonic() - started)
            if left > 0:
                await self.clock.sleep(left)
        if decided.drop_answer is not None:
            raise TransportError(f"download {path}: {decided.drop_answer}")
        return result

    async def _cut(self, path: str, headers: Mapping[str, str], sink: Sink, at: float) -> Download:
        """Fetch whole; hand the device the bytes up to `at` of the file, then fail."""
        held = _Held(sink)
        result = await self.inner.download_to(path, headers, held)
        if held.truncated:
            sink.truncate()
        body = b"".join(held.chunks)
        total = sink.size + len(body)
        cut = int(total * at)
        if sink.size >= cut or cut >= total:  # past the cut already: this attempt goes through
            if body:
                sink.write(body)
            return result
        sink.write(body[: cut - sink.size])
        raise TransportError(
            f"download {path}: connection closed after {sink.size} of {total} bytes "
            "(simulated fault)"
        )

    @asynccontextmanager
    async def open_push(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[PushChannel]:
        decided = self._verdict(PUSH)
        if not decided.passes:
            await self._before(PUSH, decided, None)
            if decided.status is not None or decided.drop_answer is not None:
                raise TransportError(f"push channel: {decided.drop_answer or decided.status}")
        async with self.inner.open_push(path, headers) as channel:
            if self.channels is None:
                yield channel
                return
            self.channels.add(channel)
            try:
                yield channel
            finally:
                self.channels.discard(channel)
