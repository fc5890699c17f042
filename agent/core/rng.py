"""Seeded randomness small enough for ten thousand agents in one process (pure).

Every random choice an agent makes (backoff jitter, check-in spread, event ids) goes through a
`RandomSource`. A rig may pass `random.Random`; the simulator passes `SplitMix64(seed)`, which
replays exactly from its seed like any seeded generator but holds one 64-bit integer instead of
Mersenne Twister's 2.5 KB state (a `random.Random` was the largest part of a parked agent).

SplitMix64 is Steele, Lea and Flood's generator (OOPSLA 2014) as Vigna publishes it
(splitmix64.c): the state advances by the golden-ratio constant, each output is a mix of it. It
passes BigCrush and is plenty for jitter and unique ids; it is not for cryptography.
"""

from __future__ import annotations

from typing import Protocol

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_UNIT = 1.0 / (1 << 53)  # 53 random bits -> a float in [0, 1)


class RandomSource(Protocol):
    def random(self) -> float:
        """A float in [0, 1)."""
        ...

    def uniform(self, a: float, b: float) -> float: ...

    def getrandbits(self, k: int) -> int: ...


class SplitMix64:
    """A seeded RandomSource in one slot."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK

    def next64(self) -> int:
        """The next 64-bit output."""
        self._state = (self._state + _GOLDEN) & _MASK
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self.next64() >> 11) * _UNIT

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * ((self.next64() >> 11) * _UNIT)  # random(), one call fewer

    def getrandbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        bits, have = 0, 0
        while have < k:
            bits = (bits << 64) | self.next64()
            have += 64
        return bits >> (have - k)
