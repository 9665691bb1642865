"""Simulation clocks: what time it is inside the simulated market.

This module owns ManualClock (time moves only when told to) and RealtimeClock
(sim time follows the wall clock, optionally faster). Both return UTC epoch
seconds as a float from now() and accept advance(seconds).
"""

from __future__ import annotations

import time
from typing import Protocol

# Monday 2024-06-03 00:00:00 UTC: a quiet, minute-aligned default start.
DEFAULT_START_EPOCH = 1_717_372_800.0


class Clock(Protocol):
    """What a SimTerminal needs from a clock."""

    def now(self) -> float:
        """Current sim time, UTC epoch seconds."""
        ...

    def advance(self, seconds: float) -> None:
        """Jump sim time forward."""
        ...


class ManualClock:
    """A clock that stands still until advance() is called."""

    def __init__(self, start_epoch: float = DEFAULT_START_EPOCH) -> None:
        self._now = float(start_epoch)

    def now(self) -> float:
        """Current sim time, UTC epoch seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move sim time forward by `seconds` (must be >= 0)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += float(seconds)


class RealtimeClock:
    """Sim time = start + (wall monotonic elapsed) * speed + manual advances."""

    def __init__(self, speed: float = 1.0, start_epoch: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self._start = time.time() if start_epoch is None else float(start_epoch)
        self._mono0 = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        """Current sim time, UTC epoch seconds."""
        return self._start + (time.monotonic() - self._mono0) * self.speed + self._offset

    def advance(self, seconds: float) -> None:
        """Jump sim time forward by `seconds` on top of the running wall time."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._offset += float(seconds)
